"""Faces: batched MTCNN annotation, the face manifest, soft face masks and 5-point alignment.

Annotation runs once per dataset (`headsup-tools prepare faces`), never per training step.
Images are detected on a copy whose longer side is at most `detect_size` (4K portraits are
detected at about a quarter of their size; boxes and landmarks are scaled back), several at a
time, padded to a common canvas. Landmarks are in the MTCNN / FFHQ order of
`headsup.data.geometry`: left eye, right eye, nose, left and right mouth corner.

The manifest is JSON Lines, one record per image, paths relative to the manifest's folder:

    {"path": "id042/img_0001.jpg", "width": 3840, "height": 5760, "error": null,
     "faces": [{"box": [x1, y1, x2, y2], "landmarks": [[x, y] x 5], "prob": 0.9999,
                "eye_distance": 131.2}]}

A record with "error" set names why the file could not be used (unreadable, for example).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

# FFHQ's 5-point template for 512x512 aligned faces (as used by GFPGAN/facexlib), in pixels.
FFHQ_TEMPLATE_512 = (
    (192.98138, 239.94708),
    (318.90277, 240.19360),
    (256.63416, 314.01935),
    (201.26117, 371.41043),
    (313.08905, 371.15118),
)


@dataclass
class Face:
    """One detected face, in pixels of the original image."""

    box: list[float]
    landmarks: list[list[float]]
    prob: float
    eye_distance: float = 0.0

    def __post_init__(self) -> None:
        (lx, ly), (rx, ry) = self.landmarks[0], self.landmarks[1]
        self.eye_distance = round(math.hypot(rx - lx, ry - ly), 3)


@dataclass
class FaceRecord:
    """One manifest line: an image, its size and its faces, or why it could not be read."""

    path: str
    width: int = 0
    height: int = 0
    faces: list[Face] = field(default_factory=list)
    error: str | None = None

    @property
    def eye_distance(self) -> float:
        """Eye distance of the largest face (0 without faces)."""
        return max((f.eye_distance for f in self.faces), default=0.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict) -> FaceRecord:
        faces = [Face(box=f["box"], landmarks=f["landmarks"], prob=f["prob"]) for f in d.get("faces", [])]
        return cls(path=d["path"], width=d.get("width", 0), height=d.get("height", 0), faces=faces,
                   error=d.get("error"))


# ---------------------------------------------------------------------------- manifest files
def read_manifest(path: str | os.PathLike) -> list[dict]:
    """All records of a JSON Lines manifest, as dicts.

    A truncated last line (an annotation run killed while writing) is ignored; a malformed line
    elsewhere is an error naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ValueError(f"{path}, line {number}: not a JSON record ({err})") from err
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[dict | FaceRecord]) -> None:
    """Write records as a new JSON Lines file (atomically: a crash keeps the old file)."""
    from headsup.data.io import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w") as handle:
            for r in records:
                line = r.to_json() if isinstance(r, FaceRecord) else json.dumps(r, separators=(",", ":"))
                handle.write(line + "\n")

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, write)


# ---------------------------------------------------------------------------- detection
def shrink(rgb: torch.Tensor, detect_size: int) -> tuple[torch.Tensor, float]:
    """The detection copy of a (3, H, W) image in [0, 1] (longer side at most `detect_size`) as
    uint8, and the factor from original to copy coordinates."""
    h, w = rgb.shape[-2:]
    scale = min(1.0, detect_size / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        rgb = F.interpolate(rgb[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        scale = size[1] / w
    return (rgb.clamp(0, 1) * 255).round().to(torch.uint8), scale


class FaceAnnotator:
    """Batched MTCNN (facenet-pytorch, whose weights ship in the wheel) on images of any size.

    Args:
        device: Torch device for detection ("cuda" when available by default).
        detect_size: Longest side images are resized to (down only) for detection.
        min_face_size: Smallest face MTCNN looks for, in pixels of the detection copy.
        thresholds: MTCNN's P/R/O-net thresholds.
        min_prob: Faces below this probability are dropped.
    """

    def __init__(
        self,
        device: str | torch.device | None = None,
        detect_size: int = 1024,
        min_face_size: int = 20,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        min_prob: float = 0.9,
    ) -> None:
        from facenet_pytorch import MTCNN

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.detect_size = detect_size
        self.min_prob = min_prob
        self.mtcnn = MTCNN(keep_all=True, device=self.device, min_face_size=min_face_size,
                           thresholds=list(thresholds), post_process=False)

    def shrink(self, rgb: torch.Tensor) -> tuple[torch.Tensor, float]:
        return shrink(rgb, self.detect_size)

    @torch.no_grad()
    def detect(self, images: list[torch.Tensor], scales: list[float] | None = None) -> list[list[Face]]:
        """Faces of each image. `images` are uint8 (3, h, w) detection copies (see `shrink`), or
        float images in [0, 1] that are shrunk here; `scales` map copies back to the originals.

        Detection runs in fp32 whatever the caller's autocast (`predict` under bf16-mixed): MTCNN's
        non-maximum suppression runs in numpy, which has no bfloat16.
        """
        with torch.autocast(device_type=self.device.type, enabled=False):
            return self._detect(images, scales)

    def _detect(self, images: list[torch.Tensor], scales: list[float] | None) -> list[list[Face]]:
        if scales is None:
            pairs = [self.shrink(im.float()) if im.is_floating_point() else (im, 1.0) for im in images]
            images, scales = [p[0] for p in pairs], [p[1] for p in pairs]
        if not images:
            return []
        h = max(im.shape[-2] for im in images)
        w = max(im.shape[-1] for im in images)
        canvas = torch.zeros(len(images), h, w, 3, device=self.device, dtype=torch.float32)
        for i, im in enumerate(images):
            canvas[i, : im.shape[-2], : im.shape[-1]] = im.to(self.device).permute(1, 2, 0).float()
        boxes, probs, points = self.mtcnn.detect(canvas, landmarks=True)
        out = []
        for i, scale in enumerate(scales):
            faces = []
            if boxes[i] is not None:
                for box, prob, pts in zip(boxes[i], probs[i], points[i]):
                    if prob is None or prob < self.min_prob:
                        continue
                    points_back = [[round(float(x) / scale, 2), round(float(y) / scale, 2)] for x, y in pts]
                    faces.append(Face(box=[round(float(v) / scale, 2) for v in box], landmarks=points_back,
                                      prob=round(float(prob), 5)))
            faces.sort(key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]), reverse=True)
            out.append(faces)
        return out


class _DetectionInputs(torch.utils.data.Dataset):
    """Decodes (EXIF, gray, RGBA, 16-bit) and shrinks images in DataLoader workers."""

    def __init__(self, root: Path, paths: list[Path], detect_size: int) -> None:
        self.root, self.paths, self.detect_size = root, paths, detect_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from headsup.data.io import ImageReadError, read_image

        rel = self.paths[i].relative_to(self.root).as_posix()
        try:
            rgb = read_image(self.paths[i]).rgb
        except ImageReadError as err:
            return {"path": rel, "error": str(err)}
        small, scale = shrink(rgb, self.detect_size)
        return {"path": rel, "image": small, "scale": scale, "width": rgb.shape[-1], "height": rgb.shape[-2]}


def annotate(
    root: str | os.PathLike,
    manifest: str | os.PathLike | None = None,
    annotator: FaceAnnotator | None = None,
    batch_size: int = 8,
    num_workers: int = 2,
    retry_errors: bool = False,
    progress: bool = True,
) -> Path:
    """Detect faces in every image under `root` and add them to the manifest (default
    ROOT/faces.jsonl). Images already in the manifest are skipped, so an interrupted run resumes;
    unreadable files become records with an error. Returns the manifest path."""
    from tqdm.auto import tqdm

    from headsup.data.io import list_images

    root = Path(root)
    manifest = Path(manifest) if manifest is not None else root / "faces.jsonl"
    done = read_manifest(manifest) if manifest.exists() else []
    if retry_errors:
        done = [r for r in done if not r.get("error")]
    seen = {r["path"] for r in done}
    todo = [p for p in list_images(root) if p.relative_to(root).as_posix() not in seen]
    write_manifest(manifest, done)  # drops a truncated last line before appending
    if not todo:
        return manifest
    annotator = annotator or FaceAnnotator()
    loader = torch.utils.data.DataLoader(_DetectionInputs(root, todo, annotator.detect_size), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=list)
    with open(manifest, "a") as handle, tqdm(total=len(todo), desc="faces", unit="img", disable=not progress) as bar:
        for items in loader:
            ok = [it for it in items if "error" not in it]
            faces = annotator.detect([it["image"] for it in ok], [it["scale"] for it in ok])
            found = dict(zip((it["path"] for it in ok), faces))
            for it in items:
                if "error" in it:
                    record = FaceRecord(path=it["path"], error=it["error"])
                else:
                    record = FaceRecord(path=it["path"], width=it["width"], height=it["height"],
                                        faces=found[it["path"]])
                handle.write(record.to_json() + "\n")
            handle.flush()
            bar.update(len(items))
    return manifest


# ---------------------------------------------------------------------------- masks and alignment
def soft_face_mask(
    boxes: torch.Tensor, valid: torch.Tensor, height: int, width: int, softness: float = 0.1
) -> torch.Tensor:
    """(B, 1, H, W) mask, 1 inside each valid face box, falling off smoothly outside it.

    boxes: (B, F, 4) in pixels; valid: (B, F). The fall-off is a logistic of the box-normalised
    Chebyshev distance, `softness` times the half-size wide, so it is 0.5 on the box edge.
    """
    b = boxes.shape[0]
    ys = torch.arange(height, device=boxes.device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=boxes.device, dtype=torch.float32) + 0.5
    cx = (boxes[..., 0] + boxes[..., 2]) / 2
    cy = (boxes[..., 1] + boxes[..., 3]) / 2
    hw = ((boxes[..., 2] - boxes[..., 0]) / 2).clamp_min(1)
    hh = ((boxes[..., 3] - boxes[..., 1]) / 2).clamp_min(1)
    dx = (xs.view(1, 1, 1, -1) - cx[..., None, None]).abs() / hw[..., None, None]
    dy = (ys.view(1, 1, -1, 1) - cy[..., None, None]).abs() / hh[..., None, None]
    mask = torch.sigmoid((1 - torch.maximum(dx, dy)) / softness) * valid[..., None, None]
    return mask.amax(1, keepdim=True) if mask.shape[1] else boxes.new_zeros(b, 1, height, width)


def box_from_landmarks(landmarks: torch.Tensor) -> torch.Tensor:
    """A face box (N, 4) from 5 landmarks (N, 5, 2), for sets without detections (aligned faces).

    The landmarks' bounding box grown by 0.5 eye distances left and right, 0.95 above and 0.7
    below: the margins of MTCNN's box around its own landmarks on scikit-image's astronaut.
    """
    eye = (landmarks[:, 1] - landmarks[:, 0]).norm(dim=-1)
    lo, hi = landmarks.amin(1), landmarks.amax(1)
    return torch.stack([lo[:, 0] - 0.5 * eye, lo[:, 1] - 0.95 * eye, hi[:, 0] + 0.5 * eye, hi[:, 1] + 0.7 * eye], 1)


def template(size: int = 512, device=None) -> torch.Tensor:
    """FFHQ's 5 points (5, 2) for a `size` x `size` aligned face."""
    return torch.tensor(FFHQ_TEMPLATE_512, device=device, dtype=torch.float32) * (size / 512)


def similarity_transform(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst points.

    src, dst: (B, N, 2). Returns (B, 2, 3) matrices M with dst ~ M @ [x, y, 1] (Umeyama, 1991).
    """
    src, dst = src.double(), dst.double()
    mu_s, mu_d = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    s, d = src - mu_s, dst - mu_d
    cov = d.transpose(1, 2) @ s / src.shape[1]
    u, sig, vt = torch.linalg.svd(cov)
    sign = torch.ones_like(sig)
    sign[:, -1] = torch.sign(torch.linalg.det(u @ vt))
    rot = u @ torch.diag_embed(sign) @ vt
    var = (s**2).sum((1, 2)) / src.shape[1]
    scale = (sig * sign).sum(1) / var
    trans = mu_d.transpose(1, 2) - scale[:, None, None] * rot @ mu_s.transpose(1, 2)
    return torch.cat([scale[:, None, None] * rot, trans], dim=2).float()


def alignment_matrix(landmarks: torch.Tensor, size: int = 512) -> torch.Tensor:
    """(B, 2, 3) similarity taking faces with 5 landmarks (B, 5, 2) onto the FFHQ template of a
    `size` square, in kornia's integer-pixel-centre coordinates (continuous coordinates - 0.5)."""
    points = template(size, landmarks.device)[None].expand(len(landmarks), -1, -1)
    return similarity_transform(landmarks - 0.5, points - 0.5)


def align_faces(images: torch.Tensor, landmarks: torch.Tensor, size: int = 512,
                fill: tuple[float, float, float] | None = None) -> torch.Tensor:
    """Warp each image so its face's 5 landmarks land on the FFHQ template; (B, 3, size, size).

    images: (B, 3, H, W); landmarks: (B, 5, 2) in pixel coordinates (pixel i covers [i, i+1)).
    Outside the photo the crop mirrors it, or with `fill` takes that colour (facexlib: gray).
    """
    matrix = alignment_matrix(landmarks, size)
    import kornia

    if fill is None:
        return kornia.geometry.transform.warp_affine(images, matrix.to(images.dtype), (size, size), mode="bilinear",
                                                     padding_mode="reflection", align_corners=True)
    colour = torch.tensor(fill, dtype=images.dtype, device=images.device)
    return kornia.geometry.transform.warp_affine(images, matrix.to(images.dtype), (size, size), mode="bilinear",
                                                 padding_mode="fill", align_corners=True, fill_value=colour)


def paste_mask(size: int, margin: float = 0.05, feather: float = 0.04, device=None) -> torch.Tensor:
    """(1, 1, size, size) mask of the aligned square: 1 inside, 0 within `margin` of the border,
    a Gaussian-smoothed edge `feather` (fractions of `size`) wide."""
    m = max(1, round(margin * size))
    mask = torch.zeros(1, 1, size, size, device=device)
    mask[..., m:-m, m:-m] = 1
    sigma = max(0.5, feather * size / 2)
    k = int(2 * round(3 * sigma) + 1)
    import kornia

    return kornia.filters.gaussian_blur2d(mask, (k, k), (sigma, sigma), border_type="constant")


def facenet_boxes(boxes: torch.Tensor, height: int, width: int, size: int = 160, margin: int = 32) -> list[tuple]:
    """Integer crop boxes (x1, y1, x2, y2) as facenet-pytorch's `extract_face` takes them: each face
    box grown by `margin` pixels of the `size` output (margin x box side / (size - margin) in the
    image), clipped to the image and truncated to integers."""
    out = []
    for x1, y1, x2, y2 in boxes.detach().double().cpu().tolist():
        mx, my = margin * (x2 - x1) / (size - margin), margin * (y2 - y1) / (size - margin)
        out.append((int(max(x1 - mx / 2, 0)), int(max(y1 - my / 2, 0)),
                    int(min(x2 + mx / 2, width)), int(min(y2 + my / 2, height))))
    return out


def facenet_crops(images: torch.Tensor, boxes: torch.Tensor, size: int = 160, margin: int = 32) -> torch.Tensor:
    """Faces cut out as facenet's recognition nets were trained to see them: the detector's box
    plus a margin, resized (not aspect-preserving) to `size` x `size` with an antialiased bilinear
    filter, as `extract_face` does with Pillow. Differentiable in the images.

    images: (N, C, H, W); boxes: (N, 4) MTCNN boxes in pixels -> (N, C, size, size).
    """
    crops = []
    for image, (x1, y1, x2, y2) in zip(images, facenet_boxes(boxes, *images.shape[-2:], size, margin)):
        face = image[None, :, y1 : max(y2, y1 + 1), x1 : max(x2, x1 + 1)]
        crops.append(F.interpolate(face, size=(size, size), mode="bilinear", antialias=True, align_corners=False))
    return torch.cat(crops) if crops else images.new_zeros(0, images.shape[1], size, size)


def iter_faces(records: Iterable[dict]) -> Iterator[tuple[dict, dict]]:
    """(record, face) for every face of every readable record."""
    for r in records:
        if r.get("error"):
            continue
        for f in r.get("faces", []):
            yield r, f
