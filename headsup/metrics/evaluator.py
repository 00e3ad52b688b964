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
from headsup.metrics.extra import ExtraMetric, MeanScore
from headsup.metrics.full_reference import ImageCount, psnr, ssim
from headsup.metrics.seam import SeamScore

SEAM_SETTING = "band 2% of the aligned face square around its border (5% margin), vs rings 2-6%"


FIDELITY = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


def fidelity_scores(sr: torch.Tensor, hq: torch.Tensor, crop_border: int) -> dict[str, torch.Tensor]:
    """Per-image PSNR/SSIM on Y and RGB (BasicSR conventions, `crop_border` px cut on each side)."""
    return {"psnr_y": psnr(sr, hq, crop_border), "ssim_y": ssim(sr, hq, crop_border),
            "psnr_rgb": psnr(sr, hq, crop_border, y_channel=False),
            "ssim_rgb": ssim(sr, hq, crop_border, y_channel=False)}


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
            "metrics": {n: m.describe() for n, m in self.metrics.items()},
            "unavailable": {n: m.unavailable for n, m in self.metrics.items() if m.unavailable},
            "color_fix": self.color_fix,
            "seam": SEAM_SETTING,
            **({"fid_reference": {n: m.reference_description for n, m in self.metrics.items()
                                  if hasattr(m, "reference_description")}}
               if any(hasattr(m, "reference_description") for m in self.metrics.values()) else {}),
        }

    def _collection(self, key: str, device: torch.device) -> MetricCollection:
        if key not in self._scores:
            self._scores[key] = MetricCollection({k: MeanScore() for k in FIDELITY} | {"images": ImageCount()},
                                                 compute_groups=False)  # updated one by one
        return self._scores[key].to(device)

    def _seam(self, key: str, device: torch.device) -> SeamScore:
        if key not in self._seams:
            self._seams[key] = SeamScore()
        return self._seams[key].to(device)

    @torch.no_grad()
    def update(self, stage: str, name: str, batch: dict, sr: torch.Tensor, scale: int,
               saved: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Score one batch of set `name`: `sr` is the model's output for `batch["lq"]`, or with `saved`
        a method's saved outputs (scored as they are: no colour fix; the bicubic row only where the
        batch has LQ). Returns the scored SR (what is saved) and the method's per-image scores
        {metric: (B,)} (metrics that score whole images; face metrics and FID are per set only)."""
        lq = batch["lq"].float() if "lq" in batch else None
        sr = sr.float() if saved else apply_color_fix(sr.float(), lq, self.color_fix)
        hq = batch["hq"].float() if "hq" in batch else None
        rows = [(self.method, sr)] + ([("bicubic", bicubic_upsampled(lq, scale))] if lq is not None else [])
        per_image: dict[str, torch.Tensor] = {}
        if hq is not None:
            for method, image in rows:
                if image.shape != hq.shape:
                    raise ValueError(f"set '{name}': {method} output {tuple(image.shape)} and HQ "
                                     f"{tuple(hq.shape)} differ in shape")
                scores = fidelity_scores(image, hq, scale)
                collection = self._collection(f"{stage}/{name}/{method}", sr.device)
                for k, v in scores.items():
                    collection[k].update(v)
                collection["images"].update(image, hq)
                if method == self.method:
                    per_image.update(scores)
                if "face_landmarks" in batch:
                    self._seam(f"{stage}/{name}/{method}", sr.device).update(image, hq, batch["face_landmarks"],
                                                                             batch["face_valid"])
        else:  # LQ-only set: SR images are kept, full-reference metrics do not apply
            self._lq_only[f"{stage}/{name}"] = self._lq_only.get(f"{stage}/{name}", 0) + sr.shape[0]
        for metric_name, metric in self.metrics.items():
            if metric.unavailable or (metric.needs_hq and hq is None) or \
                    (metric.needs_faces and "face_landmarks" not in batch):
                continue
            for method, image in rows:
                key = f"{stage}/{name}/{method}/{metric_name}"
                if key not in self._extra:
                    self._extra[key] = metric.make().to(sr.device)
                scores = metric.update(self._extra[key], image, hq, batch)
                if method == self.method and scores is not None:
                    per_image[metric_name] = scores
        return sr, per_image

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
