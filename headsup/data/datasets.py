"""Datasets returning HQ crops (training), HQ or LQ/HQ pairs (evaluation) and inputs (prediction).

Degradation is not applied here: the DataModule does it batched on the device.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset

from headsup.data.io import ImageReadError, list_images, read_image
from headsup.data.specs import DatasetSpec


def spec_files(spec: DatasetSpec) -> list[Path]:
    """HQ image paths of a spec, from its folder or its manifest."""
    if (spec.hq is None) == (spec.manifest is None):
        raise ValueError(f"dataset '{spec.name}': give exactly one of 'hq' or 'manifest'")
    if spec.hq is not None:
        files = list_images(spec.hq)
        where = spec.hq
    else:
        manifest = Path(spec.manifest)
        if not manifest.is_file():
            raise FileNotFoundError(f"dataset '{spec.name}': manifest not found: {manifest}")
        files = []
        for line in manifest.read_text().splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            path = Path(json.loads(line)["path"] if line.startswith("{") else line)
            files.append(path if path.is_absolute() else manifest.parent / path)
        where = spec.manifest
    if not files:
        raise FileNotFoundError(f"dataset '{spec.name}': no images found in {where}")
    return files


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from the header, or None if the file cannot be opened."""
    try:
        with Image.open(path) as img:
            return img.size
    except Exception:  # noqa: BLE001 - any unreadable file is reported by the caller
        return None


class RandomCropDataset(Dataset):
    """Random HQ crops with horizontal flips, for training.

    Files smaller than the crop, or unreadable, are left out with a warning naming them.
    """

    def __init__(self, spec: DatasetSpec, crop_size: int, flip: bool = True) -> None:
        self.spec = spec
        self.crop_size = crop_size
        self.flip = flip
        keep, dropped = [], []
        for path in spec_files(spec):
            size = image_size(path)
            (keep if size is not None and min(size) >= crop_size else dropped).append(path)
        if dropped:
            warnings.warn(
                f"dataset '{spec.name}': skipping {len(dropped)} unreadable or smaller-than-{crop_size}px "
                f"images: {', '.join(str(p) for p in dropped[:5])}{' ...' if len(dropped) > 5 else ''}",
                stacklevel=2,
            )
        if not keep:
            raise ValueError(f"dataset '{spec.name}': no image is at least {crop_size}x{crop_size} px")
        self.files = keep

    def __len__(self) -> int:
        return len(self.files) * self.spec.repeat

    def __getitem__(self, index: int) -> dict:
        path = self.files[index % len(self.files)]
        image = read_image(path).rgb
        _, h, w = image.shape
        s = self.crop_size
        y = int(torch.randint(h - s + 1, (1,)))
        x = int(torch.randint(w - s + 1, (1,)))
        crop = image[:, y : y + s, x : x + s]
        if self.flip and bool(torch.rand(()) < 0.5):
            crop = crop.flip(-1)
        return {"hq": crop.contiguous()}


def _mod_crop(image: torch.Tensor, scale: int, center: int | None) -> torch.Tensor:
    _, h, w = image.shape
    if center is not None:
        ch, cw = min(center, h), min(center, w)
        y, x = (h - ch) // 2, (w - cw) // 2
        image = image[:, y : y + ch, x : x + cw]
        _, h, w = image.shape
    return image[:, : h - h % scale, : w - w % scale]


class EvalDataset(Dataset):
    """Whole images (or centred crops) for validation/test.

    Paired sets return `lq` and `hq`, matched by file name stem; HQ-only sets return `hq`
    and a `seed` for the DataModule's deterministic degradation. HQ is cropped to a
    multiple of the scale (BasicSR's mod-crop).
    """

    def __init__(self, spec: DatasetSpec, scale: int) -> None:
        self.spec = spec
        self.scale = scale
        self.files = spec_files(spec)
        self.lq_files = None
        if spec.lq is not None:
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

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        item = {"name": path.stem, "index": index}
        if self.lq_files is not None:
            lq = read_image(self.lq_files[index]).rgb
            hq = read_image(path).rgb
            h, w = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
            if hq.shape[-2] < h or hq.shape[-1] < w:
                raise ValueError(
                    f"dataset '{self.spec.name}': HQ {path} is {tuple(hq.shape[-2:])}, smaller than "
                    f"LQ x{self.scale} {(h, w)}"
                )
            item.update(lq=lq, hq=hq[:, :h, :w])
        else:
            item.update(
                hq=_mod_crop(read_image(path).rgb, self.scale, self.spec.center_crop),
                seed=self.spec.seed + index,
            )
        return item


class PredictDataset(Dataset):
    """Input photos for `predict`, each returned whole with what is needed to write it back."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.files = list_images(root)
        if not self.files:
            raise FileNotFoundError(f"no images (png, jpg, webp, tif, bmp) found in {root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        rel = path.relative_to(self.root) if self.root.is_dir() else Path(path.name)
        try:
            image = read_image(path)
        except ImageReadError as err:
            # reported by the writer; the other files are still processed
            return {"lq": torch.empty(0), "alpha": torch.empty(0), "grayscale": False, "bit_depth": 8,
                    "path": str(path), "relpath": str(rel), "error": str(err)}
        return {
            "error": "",
            "lq": image.rgb,
            "alpha": image.alpha if image.alpha is not None else torch.empty(0),
            "grayscale": image.grayscale,
            "bit_depth": image.bit_depth,
            "path": str(path),
            "relpath": str(rel),
        }
