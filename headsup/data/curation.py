"""Building portrait sets from a face manifest: PortraitSR-4K filters, identities, splits, references.

The PortraitSR-4K recipe keeps photos of at least 3840x2160 (either orientation), aspect ratio
(width / height) within 0.6-1.6, and a face with eye distance of at least 64 px; optionally a
sharpness or no-reference quality floor. Identities come from face embeddings
(InceptionResnetV1 on aligned crops, cosine similarity >= 0.65 links two faces) or from folder
names; train/test splits are drawn by identity so that no person is in both, and each image's
references are other photos of the same person, never the photo itself.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch


class FaceEmbedder(Protocol):
    """What `face_embeddings` needs of a face-recognition net (`headsup.models.identity.IdentityNet`, which
    the tools layer passes in: data does not import models)."""

    def parameters(self): ...

    def crops(self, images: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor | None = None
              ) -> torch.Tensor: ...

    def embed_aligned(self, crops: torch.Tensor) -> torch.Tensor: ...


@dataclass
class PortraitFilter:
    """Acceptance thresholds of a portrait set (defaults: PortraitSR-4K).

    Args:
        min_long_side: Smallest accepted longer side, px.
        min_short_side: Smallest accepted shorter side, px.
        aspect_range: Accepted width / height range.
        min_eye_distance: Smallest accepted eye distance of the largest face, px (0: no face needed).
        min_sharpness: Smallest variance of the Laplacian of the largest face (gray, 256 px crop, 8-bit
            units); None disables it.
        iqa_metric: pyiqa no-reference metric name (e.g. musiq, maniqa, clipiqa); None disables it.
        iqa_weights: Local weights file of that metric (nothing is downloaded).
        min_iqa: Smallest accepted metric score.
    """

    min_long_side: int = 3840
    min_short_side: int = 2160
    aspect_range: tuple[float, float] = (0.6, 1.6)
    min_eye_distance: float = 64.0
    min_sharpness: float | None = None
    iqa_metric: str | None = None
    iqa_weights: str | None = None
    min_iqa: float | None = None

    def __post_init__(self) -> None:
        if self.iqa_metric is not None:
            if self.iqa_weights is None or not Path(self.iqa_weights).is_file():
                raise FileNotFoundError(
                    f"--iqa-weights: weights file for iqa metric '{self.iqa_metric}' not found: {self.iqa_weights}"
                )
            if self.min_iqa is None:
                raise ValueError("--min-iqa is needed with --iqa-metric")

    def geometry_reasons(self, record: dict) -> list[str]:
        """Why a manifest record fails the size/aspect/face thresholds (empty: it passes)."""
        if record.get("error"):
            return [f"unreadable: {record['error']}"]
        w, h = record["width"], record["height"]
        reasons = []
        if max(w, h) < self.min_long_side or min(w, h) < self.min_short_side:
            reasons.append(f"size {w}x{h} below {self.min_long_side}x{self.min_short_side}")
        lo, hi = self.aspect_range
        if not lo <= w / h <= hi:
            reasons.append(f"aspect {w / h:.2f} outside [{lo}, {hi}]")
        if self.min_eye_distance > 0:
            faces = record.get("faces", [])
            if not faces:
                reasons.append("no face found")
            elif max(f["eye_distance"] for f in faces) < self.min_eye_distance:
                eye = max(f["eye_distance"] for f in faces)
                reasons.append(f"eye distance {eye:.1f} px below {self.min_eye_distance}")
        return reasons

    def quality_reasons(self, image: torch.Tensor, record: dict, iqa=None) -> list[str]:
        """Why a decoded image (3, H, W) fails the sharpness/IQA floors (empty: it passes)."""
        reasons = []
        if self.min_sharpness is not None:
            s = face_sharpness(image, record)
            if s < self.min_sharpness:
                reasons.append(f"sharpness {s:.1f} below {self.min_sharpness}")
        if iqa is not None:
            score = float(iqa(image[None].to(getattr(iqa, "device", "cpu"))).item())
            if score < self.min_iqa:
                reasons.append(f"{self.iqa_metric} {score:.3f} below {self.min_iqa}")
        return reasons

    def build_iqa(self, device: str | torch.device = "cpu"):
        """The pyiqa metric from its local weights, or None when no metric is configured."""
        if self.iqa_metric is None:
            return None
        import pyiqa

        return pyiqa.create_metric(self.iqa_metric, as_loss=False, device=torch.device(device),
                                   pretrained_model_path=self.iqa_weights)


def face_sharpness(image: torch.Tensor, record: dict, size: int = 256) -> float:
    """Variance of the Laplacian (8-bit units) of the largest face's box resized to `size`, or of
    the whole image without faces: a common blur measure."""
    import kornia

    faces = record.get("faces") or []
    if faces:
        x1, y1, x2, y2 = (int(round(v)) for v in faces[0]["box"])
        h, w = image.shape[-2:]
        image = image[:, max(0, y1) : min(h, y2), max(0, x1) : min(w, x2)]
    gray = kornia.color.rgb_to_grayscale(image[None]) * 255
    gray = torch.nn.functional.interpolate(gray, size=(size, size), mode="area")
    return float(kornia.filters.laplacian(gray, 3).var())


# ---------------------------------------------------------------------------- identities
def folder_identities(records: list[dict]) -> dict[str, str]:
    """Identity of each image from its folder (path relative to the manifest root); images at
    the root are each their own identity."""
    out = {}
    for r in records:
        parent = Path(r["path"]).parent.as_posix()
        out[r["path"]] = parent if parent not in ("", ".") else f"image:{r['path']}"
    return out


@torch.no_grad()
def face_embeddings(records: list[dict], root: str | os.PathLike, net: FaceEmbedder,
                    batch_size: int = 32) -> dict[str, torch.Tensor]:
    """Unit-norm embedding of the largest face of each record with a face (cut out as `net` does)."""
    from headsup.data.io import read_image

    device = next(net.parameters()).device
    todo = [r for r in records if not r.get("error") and r.get("faces")]
    out: dict[str, torch.Tensor] = {}
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        crops = []
        for r in chunk:
            image = read_image(Path(root) / r["path"]).rgb[None]
            face = r["faces"][0]
            landmarks = torch.tensor(face["landmarks"], dtype=torch.float32)[None]
            box = torch.tensor(face["box"], dtype=torch.float32)[None] if face.get("box") else None
            crops.append(net.crops(image, landmarks, box)[0])
        emb = net.embed_aligned(torch.stack(crops).to(device)).cpu()
        out.update({r["path"]: e for r, e in zip(chunk, emb)})
    return out


def cluster_identities(embeddings: dict[str, torch.Tensor], threshold: float = 0.65) -> dict[str, str]:
    """Identities as connected groups of faces whose cosine similarity is at least `threshold`.

    Named after the group's first path in sorted order, so the result does not depend on order.
    """
    paths = sorted(embeddings)
    if not paths:
        return {}
    emb = torch.stack([embeddings[p] for p in paths])
    parent = list(range(len(paths)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(paths), 1024):
        sims = emb[start : start + 1024] @ emb.T
        for i, j in (sims >= threshold).nonzero().tolist():
            a, b = find(start + i), find(j)
            if a != b:
                parent[max(a, b)] = min(a, b)
    return {p: f"id:{paths[find(i)]}" for i, p in enumerate(paths)}


def reference_pairs(identities: dict[str, str], embeddings: dict[str, torch.Tensor] | None = None,
                    threshold: float = 0.65) -> dict[str, list[str]]:
    """For every image, the other images of its identity (never itself; sorted). With the faces'
    unit `embeddings`, only those whose own cosine similarity with it is at least `threshold`:
    identities are linked in chains (a~b, b~c), so a and c may be less alike than any linked pair."""
    groups: dict[str, list[str]] = {}
    for path, ident in identities.items():
        groups.setdefault(ident, []).append(path)

    def alike(p: str, q: str) -> bool:
        return embeddings is None or float(embeddings[p] @ embeddings[q]) >= threshold

    return {p: sorted(q for q in groups[identities[p]] if q != p and alike(p, q)) for p in identities}


def split_by_identity(identities: dict[str, str], test_fraction: float = 0.1, seed: int = 0) -> dict[str, str]:
    """"train" or "test" for each image; whole identities go to one side, about `test_fraction`
    of the images to test. Deterministic: identities are ordered by a seeded hash."""
    if not 0 <= test_fraction <= 1:
        raise ValueError(f"--test-fraction must be within [0, 1], got {test_fraction}")
    groups: dict[str, list[str]] = {}
    for path, ident in identities.items():
        groups.setdefault(ident, []).append(path)
    order = sorted(groups, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).hexdigest())
    target = test_fraction * len(identities)
    split, n_test = {}, 0
    for ident in order:
        side = "test" if n_test < target else "train"
        n_test += len(groups[ident]) if side == "test" else 0
        split.update({p: side for p in groups[ident]})
    return split


def build_portrait_set(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    flt: PortraitFilter | None = None,
    references: str | os.PathLike | None = None,
    test_fraction: float = 0.1,
    seed: int = 0,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> dict[str, int]:
    """Filter a face manifest into OUT/train.jsonl and OUT/test.jsonl (split by identity, with each
    image's same-identity references) and OUT/rejected.jsonl (with reasons). Returns counts.

    Identities and references come from `references` (the output of `prepare references`) or,
    without it, from folder names.
    """
    from tqdm.auto import tqdm

    from headsup.data.faces import read_manifest, write_manifest
    from headsup.data.io import ImageReadError, read_image

    manifest, out = Path(manifest), Path(out)
    flt = flt or PortraitFilter()
    outputs = [out / f"{n}.jsonl" for n in ("train", "test", "rejected")]
    if not overwrite and any(p.exists() for p in outputs):
        raise FileExistsError(f"{out} already holds a portrait set; pass --overwrite to replace it")
    records = read_manifest(manifest)
    by_path = {r["path"]: r for r in records}
    if references is not None:
        ref_records = read_manifest(references)
        identities = {r["path"]: r["identity"] for r in ref_records}
        pairs = {r["path"]: r["references"] for r in ref_records}
    else:
        identities = folder_identities([r for r in records if not r.get("error")])
        pairs = reference_pairs(identities)
    iqa = flt.build_iqa(device)
    kept, rejected = [], []
    for r in tqdm(records, desc="filter", unit="img", disable=not progress):
        reasons = flt.geometry_reasons(r)
        if not reasons and r["path"] not in identities:
            reasons = ["no identity (not in the references file)"]
        if not reasons and (flt.min_sharpness is not None or iqa is not None):
            try:
                reasons = flt.quality_reasons(read_image(manifest.parent / r["path"]).rgb, r, iqa)
            except ImageReadError as err:
                reasons = [f"unreadable: {err}"]
        (rejected if reasons else kept).append({**r, "reasons": reasons} if reasons else r)
    split = split_by_identity({r["path"]: identities[r["path"]] for r in kept}, test_fraction, seed)

    def rel(path: str) -> str:
        return Path(os.path.relpath(manifest.parent / path, out)).as_posix()

    sides: dict[str, list[dict]] = {"train": [], "test": []}
    for r in kept:
        refs = [{"path": rel(q), "landmarks": by_path[q]["faces"][0]["landmarks"]}
                for q in pairs.get(r["path"], []) if by_path.get(q, {}).get("faces") and not by_path[q].get("error")]
        sides[split[r["path"]]].append({**r, "path": rel(r["path"]), "identity": identities[r["path"]],
                                        "references": refs})
    for name, rows in (*sides.items(), ("rejected", [{**r, "path": rel(r["path"])} for r in rejected])):
        write_manifest(out / f"{name}.jsonl", rows)
    return {"train": len(sides["train"]), "test": len(sides["test"]), "rejected": len(rejected)}
