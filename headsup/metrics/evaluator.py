"""Evaluator: validation and test scores of one model against bicubic, per stage, set and method.

For every evaluation batch the model's output is colour-fixed towards the LQ (OSEDiff's protocol; the
bicubic row never is) and scored with PSNR/SSIM on Y and RGB (border `scale` cropped), the seam score
on sets with faces, and the configured extra metrics (LPIPS, NIQE, identity, FID, ...). LQ-only sets
are counted and scored only by metrics that need no HQ. `finish(stage)` returns the results table
`{set: {method: {metric: value}, "_images": n}}` (DDP-reduced by torchmetrics) and forgets the stage.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import Metric, MetricCollection

from headsup.inference.colorfix import color_fix as apply_color_fix
from headsup.metrics.extra import ExtraMetric
from headsup.metrics.full_reference import PSNR, SSIM, ImageCount
from headsup.metrics.seam import SeamScore

SEAM_SETTING = "band 2% of the aligned face square around its border (5% margin), vs rings 2-6%"


def bicubic_upsampled(lq: torch.Tensor, scale: int) -> torch.Tensor:
    """The bicubic row's image: torch's bicubic (a = -0.75) by `scale`, clamped."""
    return F.interpolate(lq, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


class Evaluator(nn.Module):
    """Scores of `method` and of bicubic upsampling over evaluation sets.

    Args:
        metrics: Extra metrics by result name (see `SRSystem`'s `metrics`).
        method: Name of the evaluated model in result tables.
        color_fix: Colour correction of the model's output before scoring: "adain", "wavelet", "none".
    """

    def __init__(self, metrics: dict[str, ExtraMetric] | None = None, method: str = "headsup",
                 color_fix: str = "adain") -> None:
        super().__init__()
        if color_fix not in ("adain", "wavelet", "none"):
            raise ValueError(f"model.eval_color_fix must be adain, wavelet or none, got '{color_fix}'")
        self.metrics = nn.ModuleDict(metrics or {})
        self.method, self.color_fix = method, color_fix
        self._scores: dict[str, MetricCollection] = {}  # stage/set/method -> PSNR/SSIM and the image count
        self._seams: dict[str, SeamScore] = {}  # stage/set/method -> seam score (sets with faces)
        self._extra: dict[str, Metric] = {}  # stage/set/method/metric -> configured extra metrics
        self._lq_only: dict[str, int] = {}  # images of LQ-only sets, per stage/set

    @property
    def settings(self) -> dict:
        """What the results files record about the metrics and the colour fix."""
        return {
            "metrics": {n: (type(m).__name__ + (f"({m.metric_name})" if hasattr(m, "metric_name") else ""))
                        for n, m in self.metrics.items()},
            "unavailable": {n: m.unavailable for n, m in self.metrics.items() if m.unavailable},
            "color_fix": self.color_fix,
            "seam": SEAM_SETTING,
            **({"fid_reference": "each set's own HQ images (as many as its 'images')"}
               if any(type(m).__name__ == "FIDMetric" for m in self.metrics.values()) else {}),
        }

    def _collection(self, key: str, crop_border: int, device: torch.device) -> MetricCollection:
        if key not in self._scores:
            self._scores[key] = MetricCollection({
                "psnr_y": PSNR(crop_border), "ssim_y": SSIM(crop_border),
                "psnr_rgb": PSNR(crop_border, y_channel=False), "ssim_rgb": SSIM(crop_border, y_channel=False),
                "images": ImageCount(),
            })
        return self._scores[key].to(device)

    def _seam(self, key: str, device: torch.device) -> SeamScore:
        if key not in self._seams:
            self._seams[key] = SeamScore()
        return self._seams[key].to(device)

    @torch.no_grad()
    def update(self, stage: str, name: str, batch: dict, sr: torch.Tensor, scale: int) -> torch.Tensor:
        """Score one batch of set `name`: `sr` is the model's output for `batch["lq"]`. Returns the
        colour-fixed SR (what is scored and saved)."""
        sr = apply_color_fix(sr.float(), batch["lq"].float(), self.color_fix)
        bicubic = bicubic_upsampled(batch["lq"].float(), scale)
        hq = batch["hq"].float() if "hq" in batch else None
        rows = ((self.method, sr), ("bicubic", bicubic))
        for metric_name, metric in self.metrics.items():
            if metric.unavailable or (metric.needs_hq and hq is None) or \
                    (metric.needs_faces and "face_landmarks" not in batch):
                continue
            for method, image in rows:
                key = f"{stage}/{name}/{method}/{metric_name}"
                if key not in self._extra:
                    self._extra[key] = metric.make().to(sr.device)
                metric.update(self._extra[key], image, hq, batch)
        if hq is None:  # LQ-only set: SR images are kept, full-reference metrics do not apply
            self._lq_only[f"{stage}/{name}"] = self._lq_only.get(f"{stage}/{name}", 0) + sr.shape[0]
            return sr
        for method, image in rows:
            self._collection(f"{stage}/{name}/{method}", scale, sr.device).update(image, hq)
            if "face_landmarks" in batch:
                self._seam(f"{stage}/{name}/{method}", sr.device).update(image, hq, batch["face_landmarks"],
                                                                         batch["face_valid"])
        return sr

    def finish(self, stage: str) -> tuple[dict, dict[str, float]]:
        """The results of `stage` and its PSNR/SSIM values flat ("stage/set/method/metric", to log);
        the stage's state is dropped."""
        results: dict[str, dict] = {}
        flat: dict[str, float] = {}
        for key in [k for k in self._scores if k.startswith(f"{stage}/")]:
            collection = self._scores.pop(key)
            _, name, method = key.split("/")
            values = {k: float(v) for k, v in collection.compute().items()}
            count = int(values.pop("images"))  # summed over DDP ranks, like the scores
            results.setdefault(name, {})[method] = values
            results[name].setdefault("_images", count)
            flat.update({f"{key}/{metric}": value for metric, value in values.items()})
        for key in [k for k in self._seams if k.startswith(f"{stage}/")]:
            metric = self._seams.pop(key)
            _, name, method = key.split("/")
            if int(metric.count) and method in results.get(name, {}):
                results[name][method]["seam"] = float(metric.compute())
        for key in [k for k in self._extra if k.startswith(f"{stage}/")]:
            metric = self._extra.pop(key)
            _, name, method, metric_name = key.split("/")
            if not (metric.update_called and int(getattr(metric, "count", 1))):
                continue
            try:
                value = float(metric.compute())
            except (RuntimeError, ValueError) as err:  # e.g. FID of a one-image set
                warnings.warn(f"{metric_name} on {name} ({method}) not computed: {err}", stacklevel=2)
                continue
            results.setdefault(name, {}).setdefault(method, {})[metric_name] = value
        for key in [k for k in self._lq_only if k.startswith(f"{stage}/")]:
            results.setdefault(key.split("/", 1)[1], {})["_images"] = self._lq_only.pop(key)
        return results, flat
