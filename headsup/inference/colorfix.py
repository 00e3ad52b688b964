"""Colour correction of SR outputs towards the (upsampled) input, as StableSR/OSEDiff users apply.

- AdaIN: per-channel mean and standard deviation of the SR are replaced by those of the
  reference (the bicubic-upsampled LQ): a global colour and contrast match.
- Wavelet: the SR's low-frequency part is replaced by the reference's. Both images are
  split with an a-trous (dilated) blur pyramid of `levels` levels (3x3 binomial kernel
  [[1, 2, 1], [2, 4, 2], [1, 2, 1]] / 16, dilations 1, 2, 4, ..., borders padded by
  replicating the edge pixels, as StableSR/OSEDiff); the output is the SR's high frequencies
  plus the reference's residual low frequencies: local colour follows the input, detail
  follows the SR. Unlike StableSR the result is clamped to [0, 1].

Both work on RGB in [0, 1] only (alpha is handled separately by the callers).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headsup.degradations.resample import pil_bicubic_resize


def adain(sr: torch.Tensor, reference: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Match each channel's mean/std of `sr` (B, 3, H, W) to `reference` (B, 3, h, w, any size)."""
    mu_s, std_s = sr.mean((2, 3), keepdim=True), sr.std((2, 3), keepdim=True)
    mu_r, std_r = reference.mean((2, 3), keepdim=True), reference.std((2, 3), keepdim=True)
    return ((sr - mu_s) / (std_s + eps) * std_r + mu_r).clamp(0, 1)


def _blur(x: torch.Tensor, dilation: int) -> torch.Tensor:
    k = torch.tensor([0.25, 0.5, 0.25], dtype=x.dtype, device=x.device)
    kernel = torch.outer(k, k).expand(x.shape[1], 1, 3, 3)
    pad = dilation
    return F.conv2d(F.pad(x, (pad, pad, pad, pad), mode="replicate"), kernel, dilation=dilation, groups=x.shape[1])


def wavelet_split(x: torch.Tensor, levels: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low): `low` after `levels` dilated blurs, `high = x - low`."""
    low = x
    for level in range(levels):
        low = _blur(low, 2**level)
    return x - low, low


def wavelet(sr: torch.Tensor, reference: torch.Tensor, levels: int = 5) -> torch.Tensor:
    """SR detail on the reference's low frequencies; `reference` is resized to the SR's size."""
    if reference.shape[-2:] != sr.shape[-2:]:
        reference = F.interpolate(reference, size=sr.shape[-2:], mode="bicubic", align_corners=False)
    high, _ = wavelet_split(sr, levels)
    _, low = wavelet_split(reference, levels)
    return (high + low).clamp(0, 1)


def color_fix(sr: torch.Tensor, lq: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    """Apply `method` ("wavelet", "adain" or "none") with the LQ input as the colour reference.

    The reference is the LQ upsampled to the SR's size with Pillow's bicubic (clamped to [0, 1]),
    as OSEDiff's test script aligns to its PIL-upsampled input: upsampling smooths, so its
    standard deviation is a little below the LQ's own.
    """
    if method == "none":
        return sr
    if lq.shape[-2:] != sr.shape[-2:]:
        lq = pil_bicubic_resize(lq, tuple(sr.shape[-2:])).clamp(0, 1)
    if method == "adain":
        return adain(sr, lq)
    if method == "wavelet":
        return wavelet(sr, lq)
    raise ValueError(f"unknown colour fix '{method}' (wavelet, adain or none)")
