"""Seam score: excess gradient (edge and colour-step) energy along the border of the face region.

Blending pipelines paste a restored face over a background SR through a mask around the
FFHQ-aligned face square; where texture or colour do not match, an edge appears along that
border. For each face (5 landmarks), the region R is the aligned square (minus a margin)
warped into the image, as the blending baseline pastes it. With E(x, A) the mean Sobel
gradient magnitude (summed over R, G, B, so colour steps count) of image x over pixels A:

    ratio(x) = E(x, band) / E(x, rings)
    seam     = ratio(SR) - ratio(HQ)

where `band` is within w px of R's border and `rings` the pixels between w and 3w px from it,
inside and outside (w = `band` times the square's side in the image). The HQ term removes the
content's own edges there: an image with no pasting scores 0 up to noise, a visible seam
scores > 0. Faces are averaged over a set.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F
from torchmetrics import Metric

from headsup.data.faces import paste_mask
from headsup.models.reference import warp_reference


def face_regions(landmarks: torch.Tensor, height: int, width: int, size: int = 512,
                 margin: float = 0.05) -> torch.Tensor:
    """(N, 1, H, W) binary masks of the aligned face squares (minus `margin`) in image pixels."""
    square = paste_mask(size, margin, feather=0.0, device=landmarks.device).round()
    return (warp_reference(square.expand(len(landmarks), -1, -1, -1), landmarks.float(), height, width) > 0.5).float()


def _dilate(mask: torch.Tensor, r: int) -> torch.Tensor:
    return F.max_pool2d(mask, 2 * r + 1, 1, r) if r > 0 else mask


def _erode(mask: torch.Tensor, r: int) -> torch.Tensor:
    return 1 - _dilate(1 - mask, r)


def seam_scores(sr: torch.Tensor, hq: torch.Tensor, landmarks: torch.Tensor, band: float = 0.02) -> torch.Tensor:
    """Per-face seam score; sr/hq: (N, 3, H, W) (one row per face), landmarks (N, 5, 2)."""
    h, w = sr.shape[-2:]
    region = face_regions(landmarks, h, w)
    side = (landmarks[:, 1] - landmarks[:, 0]).norm(dim=-1) * (512 / 125.9)  # template eye distance 125.9 px
    scores = []
    for i in range(len(landmarks)):
        r = max(1, int(round(band * float(side[i]))))
        m = region[i : i + 1]
        near = _dilate(m, r) - _erode(m, r)
        rings = (_dilate(m, 3 * r) - _erode(m, 3 * r)) - near
        ratio = []
        for img in (sr[i : i + 1], hq[i : i + 1]):
            grad = kornia.filters.sobel(img.float()).sum(1, keepdim=True)
            ratio.append((grad * near).sum() / near.sum().clamp_min(1)
                         / ((grad * rings).sum() / rings.sum().clamp_min(1)).clamp_min(1e-6))
        scores.append(ratio[0] - ratio[1])
    return torch.stack(scores) if scores else sr.new_zeros(0)


class SeamScore(Metric):
    """Mean seam score over the faces of a set (see the module docstring)."""

    higher_is_better = False
    full_state_update = False

    def __init__(self, band: float = 0.02, **kwargs) -> None:
        super().__init__(**kwargs)
        self.band = band
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, sr: torch.Tensor, hq: torch.Tensor, landmarks: torch.Tensor, valid: torch.Tensor) -> None:
        b_idx, f_idx = valid.nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return
        s = seam_scores(sr[b_idx], hq[b_idx], landmarks[b_idx, f_idx], self.band)
        self.total += s.double().sum()
        self.count += s.numel()

    def compute(self) -> torch.Tensor:
        return self.total / self.count.clamp_min(1)
