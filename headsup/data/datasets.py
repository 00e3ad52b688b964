"""Datasets returning HQ crops (training), HQ or LQ/HQ pairs (evaluation) and inputs (prediction).

Degradation is not applied here: the DataModule does it batched on the device.
"""

from __future__ import annotations

import json
import math
import warnings
from glob import escape as glob_escape
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

from headsup.data import geometry
from headsup.data.faces import align_faces, box_from_landmarks, template
from headsup.data.io import IMAGE_EXTENSIONS, ImageReadError, list_images, read_image
from headsup.data.prompts import prompt_source
from headsup.data.specs import DatasetSpec


def load_records(spec: DatasetSpec) -> list[dict]:
    """The images of a spec as records {"path": Path, ...}, from its folder or its manifest.

    Manifest records keep their other fields (faces, references from `headsup-tools prepare`);
    relative paths, the references' included, are resolved against the manifest's folder and
    records with an "error" (unreadable at annotation time) are left out.
    """
    if spec.hq is not None and spec.manifest is not None:
        raise ValueError(f"dataset '{spec.name}': give exactly one of 'hq' or 'manifest'")
    if spec.hq is None and spec.manifest is None:
        if spec.lq is None:
            raise ValueError(f"dataset '{spec.name}': give exactly one of 'hq' or 'manifest' (or, for an LQ-only "
                             "test set, only 'lq')")
        return [{"path": p} for p in _nonempty(list_images(spec.lq), spec)]
    if spec.hq is not None:
        records = [{"path": p} for p in list_images(spec.hq)]
        where = spec.hq
    else:
        manifest = Path(spec.manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"dataset '{spec.name}': manifest not found: {manifest}")
        records = []
        for number, line in enumerate(manifest.read_text().splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                record = json.loads(line) if line.startswith("{") else {"path": line}
            except json.JSONDecodeError as err:
                raise ValueError(f"dataset '{spec.name}': {manifest}, line {number}: {err}") from err
            if record.get("error"):
                continue
            record["path"] = _resolve(manifest, record["path"])
            record["references"] = [{**r, "path": _resolve(manifest, r["path"])} for r in record.get("references", [])]
            records.append(record)
        where = spec.manifest
    if not records:
        raise FileNotFoundError(f"dataset '{spec.name}': no images found in {where}")
    return records


def _nonempty(files: list[Path], spec: DatasetSpec, where: str | None = None) -> list[Path]:
    if not files:
        raise FileNotFoundError(f"dataset '{spec.name}': no images found in {where or spec.lq}")
    return files


def _resolve(manifest: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else manifest.parent / p


def spec_files(spec: DatasetSpec) -> list[Path]:
    """HQ image paths of a spec, from its folder or its manifest."""
    return [r["path"] for r in load_records(spec)]


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, after EXIF orientation, or None if the file cannot be opened."""
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(0x0112, 1)
            return (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    except Exception:  # noqa: BLE001 - any unreadable file is reported by the caller
        return None


def face_geometry(record: dict, kind: str, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes (N, 4) and landmarks (N, 5, 2) of a record, in its image's pixels.

    Face sets ("face" kind, FFHQ-style aligned crops) have one face on the FFHQ template, scaled
    to the image; other sets take the manifest's detections (none for plain folders).
    """
    if kind == "face":
        landmarks = template(512)[None] * torch.tensor([width / 512, height / 512])
        return box_from_landmarks(landmarks), landmarks
    found = record.get("faces") or []
    if not found:
        return torch.zeros(0, 4), torch.zeros(0, 5, 2)
    boxes = torch.tensor([f["box"] for f in found], dtype=torch.float32)
    landmarks = torch.tensor([f["landmarks"] for f in found], dtype=torch.float32)
    return boxes, landmarks


def pad_faces(boxes: torch.Tensor, landmarks: torch.Tensor, valid: torch.Tensor, max_faces: int) -> dict:
    """Fixed-size face fields for batching: the first `max_faces` valid faces, zero-padded."""
    boxes, landmarks = boxes[valid][:max_faces], landmarks[valid][:max_faces]
    n = boxes.shape[0]
    out_valid = torch.zeros(max_faces, dtype=torch.bool)
    out_valid[:n] = True
    return {
        "face_boxes": torch.cat([boxes, boxes.new_zeros(max_faces - n, 4)]),
        "face_landmarks": torch.cat([landmarks, landmarks.new_zeros(max_faces - n, 5, 2)]),
        "face_valid": out_valid,
    }


class ReferenceLoader:
    """The aligned face crop of a same-identity reference photo, or a "no reference" flag.

    Args:
        size: Side of the aligned reference (FFHQ 5-point template scaled to it).
    """

    def __init__(self, size: int) -> None:
        self.size = size

    def empty(self) -> dict:
        return {"reference": torch.zeros(3, self.size, self.size), "has_reference": torch.tensor(False)}

    def __call__(self, record: dict, choice: int | None) -> dict:
        refs = record.get("references") or []
        if not refs or choice is None:
            return self.empty()
        ref = refs[choice % len(refs)]
        try:
            image = read_image(ref["path"]).rgb
        except ImageReadError as err:
            warnings.warn(f"reference skipped: {err}", stacklevel=2)
            return self.empty()
        landmarks = torch.tensor(ref["landmarks"], dtype=torch.float32)[None]
        aligned = align_faces(image[None], landmarks, self.size)[0].clamp(0, 1)
        return {"reference": aligned, "has_reference": torch.tensor(True)}


def read_prompts(prompts: str | None, prompt: str | None, records: list[dict], where: str) -> list[str] | None:
    """Each record's prompt from the source `prompts` / `prompt` name (`prompt_source`), read now so
    that a missing one fails here, naming `where`; None when neither is given."""
    try:
        source = prompt_source(prompts, prompt, where)
        return None if source is None else [source(r) for r in records]
    except (FileNotFoundError, KeyError) as err:
        raise type(err)(f"{where}: {err.args[0]}") from None


class RandomCropDataset(Dataset):
    """Random HQ crops with horizontal flips, for training, with faces when annotated.

    With face annotations (a manifest from `headsup-tools prepare`, or a "face" kind set), a
    crop is placed to contain a randomly chosen whole face with probability `face_crop_prob`
    (centred on it when the face is larger than the crop); boxes and landmarks follow every
    crop and flip. Face sets (FFHQ-style aligned) are resized to the crop size whole. Files
    smaller than the crop, or unreadable, are left out with a warning naming them.

    Args:
        spec: The set.
        crop_size: HQ crop side.
        flip: Random horizontal flips.
        face_crop_prob: Probability that a crop keeps a face whole (when the image has one).
        max_faces: Face slots per item (padded; `face_valid` marks the used ones).
        reference_size: Side of the aligned reference face; None returns no reference fields.
    """

    def __init__(
        self,
        spec: DatasetSpec,
        crop_size: int,
        flip: bool = True,
        face_crop_prob: float = 0.5,
        max_faces: int = 4,
        reference_size: int | None = None,
    ) -> None:
        self.spec = spec
        self.crop_size = crop_size
        self.flip = flip
        self.face_crop_prob = face_crop_prob
        self.max_faces = max_faces
        self.references = ReferenceLoader(reference_size) if reference_size else None
        keep, dropped = [], []
        for record in load_records(spec):
            size = image_size(record["path"])
            small = size is None or (spec.kind != "face" and min(size) < crop_size)
            (dropped if small else keep).append({**record, "size": size})
        if dropped:
            warnings.warn(
                f"dataset '{spec.name}': skipping {len(dropped)} unreadable or smaller-than-{crop_size}px "
                f"images: {', '.join(str(r['path']) for r in dropped[:5])}{' ...' if len(dropped) > 5 else ''}",
                stacklevel=2,
            )
        if not keep:
            raise ValueError(f"dataset '{spec.name}': no image is at least {crop_size}x{crop_size} px")
        self.records = keep
        self.prompts = read_prompts(spec.prompts, spec.prompt, keep, f"dataset '{spec.name}'")

    @property
    def files(self) -> list[Path]:
        return [r["path"] for r in self.records]

    def __len__(self) -> int:
        return len(self.records) * self.spec.repeat

    def _window(self, boxes: torch.Tensor, width: int, height: int) -> tuple[int, int]:
        """Top-left corner of the crop: around a random face, or anywhere."""
        s = self.crop_size
        if boxes.shape[0] and bool(torch.rand(()) < self.face_crop_prob):
            x1, y1, x2, y2 = boxes[int(torch.randint(boxes.shape[0], (1,)))].tolist()
            corner = []
            for lo, hi, extent in ((x1, x2, width), (y1, y2, height)):
                first, last = math.ceil(hi) - s, math.floor(lo)  # the face inside [c, c + s)
                if first > last:  # face larger than the crop: centre on it
                    first = last = round((lo + hi) / 2 - s / 2)
                first, last = max(0, first), min(extent - s, last)
                corner.append(int(torch.randint(min(first, last), max(first, last) + 1, (1,))))
            return corner[1], corner[0]
        return int(torch.randint(height - s + 1, (1,))), int(torch.randint(width - s + 1, (1,)))

    def __getitem__(self, index: int) -> dict:
        record = self.records[index % len(self.records)]
        s = self.crop_size
        if self.spec.kind == "face":
            image = read_image(record["path"]).rgb
            _, h, w = image.shape
            boxes, landmarks = face_geometry(record, "face", w, h)
            if (h, w) != (s, s):
                image = F.interpolate(image[None], size=(s, s), mode="bicubic", antialias=True, align_corners=False)
                image = image[0].clamp(0, 1)
                boxes, landmarks = geometry.resize(boxes, landmarks, s / h, s / w)
            crop, valid = image, torch.ones(1, dtype=torch.bool)
        else:
            w, h = record["size"]
            boxes, landmarks = face_geometry(record, self.spec.kind, w, h)
            top, left = self._window(boxes, w, h)
            crop = read_image(record["path"], box=(left, top, left + s, top + s)).rgb
            if crop.shape[-2:] != (s, s):
                raise ValueError(f"dataset '{self.spec.name}': {record['path']} is {tuple(crop.shape[-2:])} after "
                                 f"cropping at {(top, left)}; its size changed since it was listed")
            boxes, landmarks, valid = geometry.crop(boxes, landmarks, top, left, s, s)
        if self.flip and bool(torch.rand(()) < 0.5):
            crop = crop.flip(-1)
            boxes, landmarks = geometry.hflip(boxes, landmarks, s)
        item = {"hq": crop.contiguous(), **pad_faces(boxes, landmarks, valid, self.max_faces)}
        if self.prompts is not None:
            item["prompt"] = self.prompts[index % len(self.records)]
        if self.references is not None:
            refs = record.get("references") or []
            # the reference shows the person of the image's main face (index 0): only when that face
            # is still in the crop (it is then face slot 0) is the reference used
            usable = refs and valid.numel() > 0 and bool(valid[0])
            item.update(self.references(record, int(torch.randint(len(refs), (1,))) if usable else None))
        return item


def _mod_crop(image: torch.Tensor, scale: int, center: int | None) -> tuple[torch.Tensor, int, int]:
    """The image cropped to `center` (if given) and to a multiple of `scale`, and the crop's corner."""
    _, h, w = image.shape
    top = left = 0
    if center is not None:
        ch, cw = min(center, h), min(center, w)
        top, left = (h - ch) // 2, (w - cw) // 2
        image = image[:, top : top + ch, left : left + cw]
        _, h, w = image.shape
    return image[:, : h - h % scale, : w - w % scale], top, left


class EvalDataset(Dataset):
    """Whole images (or centred crops) for validation/test.

    Paired sets return `lq` and `hq`, matched by file name stem (with `sr`, also a method's saved
    output of the same name, never mod-cropped: it must match HQ's size); HQ-only sets return `hq`
    and a `seed` for the DataModule's deterministic degradation; LQ-only sets (real
    photos without ground truth) return `lq` alone. HQ is cropped to a
    multiple of the scale (BasicSR's mod-crop). Annotated sets (portrait manifests, face
    sets) also return their faces in HQ pixels, like training items, and with `reference_size`
    the aligned face of the first listed same-person reference.
    """

    def __init__(self, spec: DatasetSpec, scale: int, max_faces: int = 4, reference_size: int | None = None) -> None:
        self.spec = spec
        self.scale = scale
        self.max_faces = max_faces
        self.references = ReferenceLoader(reference_size) if reference_size else None
        self.records = load_records(spec)
        self.files = [r["path"] for r in self.records]
        self.prompts = read_prompts(spec.prompts, spec.prompt, self.records, f"dataset '{spec.name}'")
        self.annotated = spec.kind == "face" or any("faces" in r for r in self.records)
        self.lq_files = None
        self.lq_only = spec.hq is None and spec.manifest is None
        if spec.lq is not None and not self.lq_only:
            lq = {p.stem: p for p in list_images(spec.lq)}
            hq = {p.stem: p for p in self.files}
            missing_lq = sorted(set(hq) - set(lq))
            missing_hq = sorted(set(lq) - set(hq))
            if missing_lq or missing_hq:
                raise ValueError(
                    f"dataset '{spec.name}': LQ ({spec.lq}) and HQ files do not pair by name; "
                    f"no LQ for {missing_lq[:5]}, no HQ for {missing_hq[:5]}"
                )
            self.lq_files = [lq[p.stem] for p in self.files]
        self.sr_files = None
        if spec.sr is not None:
            if self.lq_only:
                raise ValueError(f"dataset '{spec.name}': 'sr' (saved outputs) is scored against 'hq': give 'hq' too")
            sr = {p.stem: p for p in _nonempty(list_images(spec.sr), spec, spec.sr)}
            missing = sorted(p.stem for p in self.files if p.stem not in sr)
            if missing:
                raise ValueError(f"dataset '{spec.name}': no saved output in {spec.sr} for {len(missing)} HQ "
                                 f"images, e.g. {missing[:5]}")
            self.sr_files = [sr[p.stem] for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        item = {"name": path.stem, "index": index}
        if self.prompts is not None:
            item["prompt"] = self.prompts[index]
        if self.lq_only:  # real-world LQ without ground truth: no-reference metrics only
            item["lq"] = read_image(path).rgb
            return item
        full = read_image(path).rgb
        if self.lq_files is not None:
            lq = read_image(self.lq_files[index]).rgb
            h, w = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
            if full.shape[-2] < h or full.shape[-1] < w:
                raise ValueError(
                    f"dataset '{self.spec.name}': HQ {path} is {tuple(full.shape[-2:])}, smaller than "
                    f"LQ x{self.scale} {(h, w)}"
                )
            hq, top, left = full[:, :h, :w], 0, 0
            item.update(lq=lq, hq=hq)
        elif self.sr_files is not None:  # saved outputs without LQ: scored against the whole HQ, no bicubic row
            hq, top, left = full, 0, 0
            item.update(hq=hq)
        else:
            hq, top, left = _mod_crop(full, self.scale, self.spec.center_crop)
            item.update(hq=hq, seed=self.spec.seed + index)
        if self.sr_files is not None:
            sr = read_image(self.sr_files[index]).rgb
            if sr.shape != hq.shape:
                raise ValueError(f"dataset '{self.spec.name}': saved output {self.sr_files[index]} is "
                                 f"{tuple(sr.shape[-2:])}, HQ {path} is {tuple(hq.shape[-2:])}")
            item["sr"] = sr
        if self.annotated:
            boxes, landmarks = face_geometry(self.records[index], self.spec.kind, full.shape[-1], full.shape[-2])
            boxes, landmarks, valid = geometry.crop(boxes, landmarks, top, left, hq.shape[-2], hq.shape[-1])
            item.update(pad_faces(boxes, landmarks, valid, self.max_faces))
        if self.references is not None:  # the first listed reference: the same in every run
            item.update(self.references(self.records[index], 0))
        return item


class PredictDataset(Dataset):
    """Input photos for `predict`, each returned whole with what is needed to write it back.

    Args:
        root: An image file or a folder (searched recursively).
        reference: Reference photo(s) of the person for reference-conditioned models: one file used
            for every input, or a folder where an input's reference has the same relative path and
            stem (any image extension: `refs/alice.jpg` for `photos/alice.png`).
        skip: Called with each input's path and its path relative to `root`; inputs it returns True
            for are left out (and listed in `skipped`), e.g. those whose output already exists.
        prompts: Each input's tags: "txt" (`<stem>.txt` beside it) or a .jsonl map (`headsup.data.prompts`).
        prompt: The user's prompt, for every input.
        prompt_format: How an input's text is made from its `{tags}` and the user's `{prompt}` (OSEDiff's
            test script: "{tags}, {prompt},"). Without `prompts` or `prompt` the model's fixed prompt is used.
    """

    def __init__(self, root: str, reference: str | None = None, skip=None, prompts: str | None = None,
                 prompt: str | None = None, prompt_format: str = "{tags}") -> None:
        self.root = Path(root)
        files = list_images(root)
        if not files:
            raise FileNotFoundError(f"no images (png, jpg, webp, tif, bmp) found in {root}")
        self.skipped = [p for p in files if skip is not None and skip(p, self._rel(p))]
        self.files = [p for p in files if p not in self.skipped]
        self.reference = Path(reference) if reference else None
        if self.reference is not None and not self.reference.exists():
            raise FileNotFoundError(f"--data.predict_reference: {reference} does not exist")
        self.prompts = None
        if prompts is not None or prompt is not None:
            records = [{"path": p} for p in self.files]
            tags = read_prompts(prompts, None, records, "--data.predict_prompts") or [""] * len(self.files)
            try:
                self.prompts = [prompt_format.format(tags=t, prompt=prompt or "") for t in tags]
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"--data.predict_prompt_format {prompt_format!r}: use {{tags}} and {{prompt}} "
                                 f"(not {err})") from None

    def __len__(self) -> int:
        return len(self.files)

    def _rel(self, path: Path) -> Path:
        return path.relative_to(self.root) if self.root.is_dir() else Path(path.name)

    def reference_of(self, rel: Path) -> Path | None:
        """The reference photo of the input at `rel` (relative to the input root), if any."""
        if self.reference is None or self.reference.is_file():
            return self.reference
        stem = self.reference / rel.parent / rel.stem
        found = [p for p in stem.parent.glob(glob_escape(stem.name) + ".*") if p.suffix.lower() in IMAGE_EXTENSIONS
                 and p.stem == rel.stem]
        return sorted(found)[0] if found else None

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        rel = self._rel(path)
        ref_path = self.reference_of(rel)
        item = {"path": str(path), "relpath": str(rel), "reference_path": str(ref_path or ""),
                "reference_image": torch.empty(0), "reference_error": ""}
        if self.prompts is not None:
            item["prompt"] = self.prompts[index]
        if ref_path is not None:
            try:
                item["reference_image"] = read_image(ref_path).rgb
            except ImageReadError as err:
                item["reference_error"] = str(err)
        try:
            image = read_image(path)
        except ImageReadError as err:
            # reported by the writer; the other files are still processed
            return {**item, "lq": torch.empty(0), "alpha": torch.empty(0), "grayscale": False, "bit_depth": 8,
                    "error": str(err)}
        return {
            **item,
            "error": "",
            "lq": image.rgb,
            "alpha": image.alpha if image.alpha is not None else torch.empty(0),
            "grayscale": image.grayscale,
            "bit_depth": image.bit_depth,
        }
