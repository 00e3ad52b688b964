"""Writes `headsup predict` outputs: one image per input, mirroring the input folder layout."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch.nn.functional as F

from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn

from headsup.data.io import save_image
from headsup.inference.colorfix import color_fix
from headsup.models.tiling import tile_seam_score


class PredictWriter(BasePredictionWriter):
    """Save each prediction under `output_dir`, never over an input and never over an existing file
    unless `overwrite`. Unreadable inputs are reported and skipped.

    Args:
        output_dir: Folder for the enhanced images (required by `predict`).
        ext: Output file extension (".png", ".jpg", ".webp", ".tif"); None keeps PNG for every input.
        suffix: Text appended to each output file stem.
        overwrite: Replace outputs that already exist.
        quality: JPEG/WebP quality.
        color_fix: Colour correction towards the input: "adain" (channel mean/std of the input, the
            OSEDiff default), "wavelet" (the input's low frequencies under the SR's detail) or "none".
        outscale: Final size as a multiple of the input (like Real-ESRGAN's --outscale): the model's
            output is resized (bicubic, antialiased) to round(input size x outscale); None keeps the
            model's scale.
    """

    def __init__(
        self,
        output_dir: str | None = None,
        ext: str | None = None,
        suffix: str = "",
        overwrite: bool = False,
        quality: int = 95,
        color_fix: Literal["adain", "wavelet", "none"] = "adain",
        outscale: float | None = None,
    ) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.ext = ext
        self.suffix = suffix
        self.overwrite = overwrite
        self.quality = quality
        if color_fix not in ("adain", "wavelet", "none"):
            raise ValueError(f"--writer.color_fix must be adain, wavelet or none, got '{color_fix}'")
        self.color_fix = color_fix
        if outscale is not None and outscale <= 0:
            raise ValueError(f"--writer.outscale must be positive, got {outscale}")
        self.outscale = outscale
        self.written: list[Path] = []
        self.skipped: list[Path] = []
        self.failed: list[str] = []
        self.notes: list[str] = []  # "input: what could not be used" (no face, unreadable reference, ...)
        self.referenced: list[Path] = []  # outputs made with a reference photo
        self.seams: dict[Path, float] = {}  # tiled outputs -> seam score at their tile edges
        self._reported = True

    def output_path(self, relpath: str | Path) -> Path:
        rel = Path(relpath)
        return Path(self.output_dir) / rel.parent / f"{rel.stem}{self.suffix}{self.ext or '.png'}"

    def _exists(self, path: Path, relpath: Path) -> bool:
        out = self.output_path(relpath)
        if out.resolve() == Path(path).resolve():
            raise ValueError(f"output {out} would overwrite its input; choose another --writer.output_dir or suffix")
        return not self.overwrite and out.exists()

    def setup(self, trainer, pl_module, stage: str) -> None:
        # inputs whose output exists are not even read (a rerun over a folder resumes)
        if stage != "predict":
            return
        if self.output_dir is None:
            raise ValueError("predict needs an output folder: set --writer.output_dir")
        dm = getattr(trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "predict_skip"):
            dm.predict_skip = self._exists
        self.written, self.skipped, self.failed, self.notes, self.referenced, self.seams = [], [], [], [], [], {}
        self._reported = False

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):
        if "error" in prediction:
            error, path = prediction["error"], str(prediction.get("path", ""))
            self.failed.append(error if path in error else f"{path}: {error}")  # each line names its file
            rank_zero_warn(f"skipped: {self.failed[-1]}")
            return
        out = self.output_path(prediction["relpath"])
        if out.resolve() == Path(prediction["path"]).resolve():
            raise ValueError(f"output {out} would overwrite its input; choose another --writer.output_dir or suffix")
        if out.exists() and not self.overwrite:
            self.skipped.append(out)
            return
        for note in prediction.get("notes", []):
            self.notes.append(f"{prediction['path']}: {note}")
            rank_zero_warn(self.notes[-1])
        if prediction.get("reference"):
            self.referenced.append(out)
        rows, cols = prediction.get("tile_edges", ([], []))
        h, w = prediction["sr"].shape[-2:]
        rows, cols = [r for r in rows if r < h], [c for c in cols if c < w]
        if rows or cols:  # measured on the model's output, before colour fix and resizing
            self.seams[out] = tile_seam_score(prediction["sr"], rows, cols)
        alpha = prediction["alpha"][0] if prediction["alpha"] is not None else None
        sr = color_fix(prediction["sr"], batch["lq"].to(prediction["sr"]), self.color_fix)  # RGB only
        if self.outscale is not None:
            h, w = batch["lq"].shape[-2:]
            size = (max(1, round(h * self.outscale)), max(1, round(w * self.outscale)))
            if size != tuple(sr.shape[-2:]):
                sr = F.interpolate(sr, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
                if alpha is not None:
                    alpha = F.interpolate(alpha[None], size=size, mode="bicubic", antialias=True,
                                          align_corners=False)[0].clamp(0, 1)
        save_image(out, sr[0], alpha=alpha, grayscale=prediction["grayscale"],
                   bit_depth=prediction["bit_depth"], quality=self.quality)
        self.written.append(out)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._report(trainer)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        # with every output already there the predict loop does not run: the summary still comes
        if stage == "predict" and not self._reported:
            self._report(trainer)

    def _report(self, trainer) -> None:
        self._reported = True
        dm = getattr(trainer, "datamodule", None)
        root = Path(getattr(dm, "predict_input", None) or ".")
        self.skipped += [self.output_path(Path(p).relative_to(root) if root.is_dir() else Path(p).name)
                         for p in getattr(dm, "predict_skipped", [])]
        msg = f"predict: {len(self.written)} written to {self.output_dir}"
        if self.skipped:
            msg += f", {len(self.skipped)} already there (kept; --writer.overwrite true to replace)"
        if self.referenced:
            msg += f", {len(self.referenced)} with a reference photo"
        if self.seams:
            msg += (f", {len(self.seams)} tiled (tile-edge seam score, 0 = none: max "
                    f"{max(self.seams.values()):.3f})")
        if self.failed:
            msg += f", {len(self.failed)} unreadable:\n  " + "\n  ".join(self.failed)
        if self.notes:
            msg += "\nnotes:\n  " + "\n  ".join(self.notes)
        print(msg)
