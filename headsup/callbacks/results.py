"""Writes `headsup test` results into the run folder: results.json, results.csv, results.md, SR images,
and per_image.csv (the method's score of every image, for metrics that score whole images).

A sweep is resumable: sets already in `results.json` from the same method and checkpoint are
not evaluated again (unless `overwrite`), and new sets are merged in. Results of another
checkpoint are never lost: the old file is kept as `results.<date>.json` before a new one is
written. Every file records the evaluation settings that make its numbers comparable.
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from headsup.data.io import atomic_write, save_image

# column title and direction of each metric
METRICS = {
    "psnr_y": "PSNR-Y (dB) ↑",
    "ssim_y": "SSIM-Y ↑",
    "psnr_rgb": "PSNR-RGB (dB) ↑",
    "ssim_rgb": "SSIM-RGB ↑",
    "psnr_y_nocrop": "PSNR-Y no crop (dB) ↑",
    "ssim_y_nocrop": "SSIM-Y no crop ↑",
    "lpips": "LPIPS ↓",
    "lpips_vgg": "LPIPS-VGG ↓",
    "dists": "DISTS ↓",
    "fid": "FID ↓",
    "niqe": "NIQE ↓",
    "musiq": "MUSIQ ↑",
    "maniqa": "MANIQA ↑",
    "clipiqa": "CLIPIQA ↑",
    "deg": "Deg (ID cos) ↑",
    "deg_ref": "Deg vs reference ↑",  # ReferenceIdentityCosine
    "lmd": "LMD (px) ↓",
    "seam": "Seam ↓",
}


def _fmt(metric: str, value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if metric.startswith(("ssim", "lpips", "dists", "maniqa", "clipiqa", "deg", "seam")) \
        else f"{value:.2f}"


def _rows(sets: dict) -> tuple[list[str], list[tuple[str, str, int, dict]]]:
    metrics = sorted({m for r in sets.values() for k, v in r.items() if isinstance(v, dict) for m in v},
                     key=lambda m: (list(METRICS).index(m) if m in METRICS else len(METRICS), m))
    rows = [(name, method, r.get("images"), values) for name, r in sets.items()
            for method, values in r.items() if isinstance(values, dict)]
    return metrics, rows


def results_table(sets: dict) -> str:
    """Markdown table: one row per set and method, one column per metric (with its direction)."""
    metrics, rows = _rows(sets)
    header = ["set", "method", "images"] + [METRICS.get(m, m) for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, method, images, values in rows:
        lines.append("| " + " | ".join([name, method, str(images)] + [_fmt(m, values.get(m)) for m in metrics]) + " |")
    return "\n".join(lines)


def results_csv(sets: dict) -> str:
    metrics, rows = _rows(sets)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["set", "method", "images", *metrics])
    for name, method, images, values in rows:
        writer.writerow([name, method, images, *[values.get(m, "") for m in metrics]])
    return out.getvalue()


def _version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def _protocol(spec) -> str:
    """How a test set's images were scored, for results.json."""
    if spec.sr:
        return f"saved outputs {spec.sr}, scored as saved (no colour fix)" + \
            (", paired LQ for the bicubic row" if spec.lq else "")
    return (f"centre crop {spec.center_crop} px of HQ" if spec.center_crop else "whole image") + \
        (", paired LQ" if spec.lq else ", synthetic LQ")


def _checkpoint_id(path) -> dict | None:
    if not path:
        return None
    p = Path(path)
    stat = p.stat() if p.is_file() else None
    return {"path": str(p.resolve()), "bytes": stat.st_size if stat else None,
            "modified": int(stat.st_mtime) if stat else None}


class ResultsWriter(Callback):
    """After `test`: results files and SR images under the run folder.

    Args:
        save_images: Save each test set's SR images under `<run>/test_images/<set>/`.
        image_dir: Folder name of the SR images inside the run folder.
        overwrite: Evaluate every set again even if the results already hold it.
    """

    def __init__(self, save_images: bool = True, image_dir: str = "test_images", overwrite: bool = False) -> None:
        self.save_images = save_images
        self.image_dir = image_dir
        self.overwrite = overwrite
        self._previous: dict = {}
        self._run_dir: Path | None = None
        self._per_image: list[dict] = []  # this rank's rows of per_image.csv

    def _run(self, trainer) -> Path:
        # trainer.log_dir is a collective call under DDP: resolved once, on every rank, in setup
        if self._run_dir is None:
            self._run_dir = Path(trainer.log_dir or trainer.default_root_dir)
        return self._run_dir

    def setup(self, trainer, pl_module, stage: str) -> None:
        self._previous = {}
        self._per_image = []
        self._run_dir = None
        self._run(trainer)
        dm = getattr(trainer, "datamodule", None)
        if stage == "test" and dm is not None:
            # asked when the test loaders are built, after the checkpoint path is known
            dm.completed_test_sets = lambda: self._completed(trainer, pl_module)

    def _completed(self, trainer, pl_module) -> set[str]:
        """Sets of the existing results.json from this method and checkpoint (to skip), or none;
        results of another model are moved aside to results.<date>.json."""
        self._previous = {}
        path = self._run(trainer) / "results.json"
        if not path.is_file():
            return set()
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        checkpoint = _checkpoint_id(trainer.ckpt_path)
        # without a checkpoint (an in-memory model) nothing ties old numbers to these weights
        same = checkpoint is not None and old.get("method") == pl_module.method and old.get("checkpoint") == checkpoint
        if not same:
            if trainer.is_global_zero:
                stamp = old.get("date", "old").replace(":", "").replace("+", "_")
                os.replace(path, path.with_name(f"results.{stamp}.json"))
                if (path.parent / "per_image.csv").is_file():
                    os.replace(path.parent / "per_image.csv", path.with_name(f"per_image.{stamp}.csv"))
            return set()
        if self.overwrite:
            return set()
        self._previous = old
        done = set(old.get("sets", {}))
        wanted = [s.name for s in trainer.datamodule.test_specs if s.name in done]
        if wanted:
            print(f"results.json already has {wanted} from this checkpoint: not evaluated again "
                  "(--results.overwrite true to recompute)")
        return done

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if not outputs:
            return
        scores = {k: v.detach().double().cpu().tolist() for k, v in outputs.get("scores", {}).items()}
        for i, name in enumerate(outputs["names"]):
            self._per_image.append({"set": outputs["set"], "method": pl_module.method, "image": name,
                                    **{k: v[i] for k, v in scores.items()}})
        if not self.save_images or outputs.get("saved"):  # saved outputs are not copied again
            return
        folder = self._run(trainer) / self.image_dir / outputs["set"]
        for image, name in zip(outputs["sr"], outputs["names"]):
            save_image(folder / f"{name}.png", image)

    def _gathered_rows(self, trainer) -> list[dict]:
        """Every rank's per-image rows (a collective call under DDP)."""
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            parts: list = [None] * trainer.world_size
            torch.distributed.all_gather_object(parts, self._per_image)
            return [row for part in parts for row in part]
        return list(self._per_image)

    def _write_per_image(self, run: Path, rows: list[dict], evaluated: set[str]) -> None:
        """per_image.csv: this test's rows, and those of sets kept from the same model's earlier results."""
        path = run / "per_image.csv"
        if self._previous and path.is_file():
            with path.open(newline="") as f:
                rows = [r for r in csv.DictReader(f) if r["set"] not in evaluated] + rows
        if not rows:
            return
        metrics = sorted({k for r in rows for k in r} - {"set", "method", "image"},
                         key=lambda m: (list(METRICS).index(m) if m in METRICS else len(METRICS), m))
        out = io.StringIO()
        writer = csv.DictWriter(out, ["set", "method", "image", *metrics], restval="")
        writer.writeheader()
        writer.writerows(sorted(rows, key=lambda r: (r["set"], r["image"])))
        atomic_write(path, lambda tmp: Path(tmp).write_text(out.getvalue()))

    def on_test_end(self, trainer: L.Trainer, pl_module) -> None:
        rows = self._gathered_rows(trainer)
        if not trainer.is_global_zero:
            return
        results = getattr(pl_module, "test_results", {})
        run = self._run(trainer)
        run.mkdir(parents=True, exist_ok=True)
        scale = pl_module.generator.scale
        dm = getattr(trainer, "datamodule", None)
        specs = {s.name: s for s in getattr(dm, "test_specs", [])}
        sets = dict(self._previous.get("sets", {}))
        for name, r in results.items():
            sets[name] = {"images": r.get("_images"), **{k: v for k, v in r.items() if not k.startswith("_")}}
        protocol = dict(self._previous.get("settings", {}).get("test_crop", {}))
        protocol.update({name: _protocol(specs[name]) for name in results if name in specs})
        payload = {
            "method": pl_module.method,
            "checkpoint": _checkpoint_id(trainer.ckpt_path),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": {
                "psnr_ssim": "BasicSR conventions: 8-bit rounding first, Y of ITU-R BT.601 (psnr_y/ssim_y) or "
                "RGB (psnr_rgb/ssim_rgb), SSIM Gaussian 11x11 sigma 1.5 on the valid region, mean of per-image "
                "scores; equals pyiqa's psnr with color_space=ycbcr, not its default (the Y of YIQ)",
                "crop_border": scale,
                "scale": scale,
                "value_range": "[0, 1] floats, compared on 0-255",
                "test_crop": protocol,
                "degradation": repr(dm.degradation) if dm is not None else None,
                "versions": {p: _version(p) for p in ("headsup", "torch", "torchmetrics", "pyiqa", "facenet-pytorch")},
                **getattr(pl_module, "metric_settings", {}),
            },
            "sets": sets,
            "skipped": {**self._previous.get("skipped", {}), **getattr(dm, "missing_test_sets", {})},
        }
        for name in sets:
            payload["skipped"].pop(name, None)
        self._write_per_image(run, rows, set(results))
        text = json.dumps(payload, indent=2) + "\n"
        atomic_write(run / "results.json", lambda tmp: Path(tmp).write_text(text))
        atomic_write(run / "results.csv", lambda tmp: Path(tmp).write_text(results_csv(sets)))
        table = results_table(sets)
        notes = "".join(f"\nskipped {k}: {v}" for k, v in payload["skipped"].items())
        atomic_write(run / "results.md", lambda tmp: Path(tmp).write_text(table + "\n" + notes + "\n"))
        print(f"\nResults ({run / 'results.json'}):\n{table}{notes}\n")
