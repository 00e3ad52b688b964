"""Writes test results (JSON + Markdown table) and the SR images of `headsup test` into the run folder."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback

from headsup.data.io import atomic_write, save_image

_ARROWS = {"psnr_y": "PSNR-Y (dB) ↑", "ssim_y": "SSIM-Y ↑"}


def results_table(results: dict) -> str:
    """Markdown table: one row per set and method, one column per metric."""
    metrics = sorted({m for r in results.values() for k, v in r.items() if not k.startswith("_") for m in v})
    header = ["set", "method", "images"] + [_ARROWS.get(m, m) for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, per_method in results.items():
        for method, values in per_method.items():
            if method.startswith("_"):
                continue
            cells = [name, method, str(per_method.get("_images", ""))]
            cells += [f"{values[m]:.4f}" if m.startswith("ssim") else f"{values[m]:.2f}" for m in metrics]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


class ResultsWriter(Callback):
    """After `test`: `results.json`, `results.md` and SR images under the run folder.

    Args:
        save_images: Save each test set's SR images under `<run>/test_images/<set>/`.
        image_dir: Folder name of the SR images inside the run folder.
    """

    def __init__(self, save_images: bool = True, image_dir: str = "test_images") -> None:
        self.save_images = save_images
        self.image_dir = image_dir

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not self.save_images or not outputs:
            return
        folder = Path(trainer.log_dir or trainer.default_root_dir) / self.image_dir / outputs["set"]
        for image, name in zip(outputs["sr"], outputs["names"]):
            save_image(folder / f"{name}.png", image)

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        results = getattr(pl_module, "test_results", {})
        run = Path(trainer.log_dir or trainer.default_root_dir)
        run.mkdir(parents=True, exist_ok=True)
        scale = pl_module.generator.scale
        dm = getattr(trainer, "datamodule", None)
        payload = {
            "method": pl_module.method,
            "checkpoint": str(trainer.ckpt_path) if trainer.ckpt_path else None,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": {
                "psnr_ssim": "BasicSR conventions: 8-bit rounding, Y channel of ITU-R BT.601, "
                "SSIM Gaussian 11x11 sigma 1.5 valid region",
                "crop_border": scale,
                "scale": scale,
                "value_range": "[0, 1] -> 0-255",
                "degradation": repr(dm.degradation) if dm is not None else None,
            },
            "sets": {
                name: {"images": r.get("_images"), **{k: v for k, v in r.items() if not k.startswith("_")}}
                for name, r in results.items()
            },
        }
        text = json.dumps(payload, indent=2) + "\n"
        atomic_write(run / "results.json", lambda tmp: Path(tmp).write_text(text))
        table = results_table(results)
        atomic_write(run / "results.md", lambda tmp: Path(tmp).write_text(table + "\n"))
        print(f"\nResults ({run / 'results.json'}):\n{table}\n")
