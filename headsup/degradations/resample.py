"""Pillow's bicubic resampling as separable matrix products (batched, on any device, differentiable).

OSEDiff's test script upsamples the LQ with PIL's `Image.resize(..., BICUBIC)` before its model;
torch's `F.interpolate(mode="bicubic")` differs from it (cubic coefficient a = -0.75 instead of
Pillow's -0.5, edge replication instead of Pillow's renormalised border weights). This module
reproduces Pillow's resampling filter (libImaging/Resample.c): for output pixel i, the centre
c = (i + 0.5) * in/out; taps j in [int(c - s + 0.5), int(c + s + 0.5)) inside the image, with
support s = 2 * max(in/out, 1); weights k((j - c + 0.5) / max(in/out, 1)), normalised to sum 1.
For 8-bit images Pillow runs the horizontal pass, rounds and clips to 0-255, then the vertical
pass; `eight_bit=True` does the same (bicubic overshoot clipped between the passes), so the output
equals Pillow's 8-bit result up to ties in rounding.
"""

from __future__ import annotations

import torch

PIL_BICUBIC_A = -0.5


def _cubic(x: torch.Tensor, a: float = PIL_BICUBIC_A) -> torch.Tensor:
    x = x.abs()
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1, near, torch.where(x < 2, far, torch.zeros_like(x)))


def pil_bicubic_weights(in_size: int, out_size: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """(out_size, in_size) matrix of Pillow's bicubic resampling along one axis."""
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    centre = (torch.arange(out_size, dtype=torch.float64) + 0.5) * scale
    lo = (centre - support + 0.5).trunc().clamp_min(0)  # C's int(): towards zero
    hi = (centre + support + 0.5).trunc().clamp_max(in_size)
    j = torch.arange(in_size, dtype=torch.float64)
    w = _cubic((j[None] - centre[:, None] + 0.5) / filterscale)
    w = torch.where((j[None] >= lo[:, None]) & (j[None] < hi[:, None]), w, torch.zeros_like(w))
    return (w / w.sum(1, keepdim=True)).to(dtype=dtype, device=device)


def _to_8_bit(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().clamp(0, 255) / 255


def pil_bicubic_resize(x: torch.Tensor, size: tuple[int, int], eight_bit: bool = False) -> torch.Tensor:
    """Resize (..., H, W) in [0, 1] to `size` (h, w) as PIL's `Image.resize((w, h), Image.BICUBIC)`
    does: in floating point as Pillow's "F" mode, or with `eight_bit` as its 8-bit modes."""
    h, w = size
    dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    wy = pil_bicubic_weights(x.shape[-2], h, dtype, x.device)
    wx = pil_bicubic_weights(x.shape[-1], w, dtype, x.device)
    rows = x.to(dtype) @ wx.T  # Pillow's horizontal pass first
    if eight_bit:
        rows = _to_8_bit(rows)
    out = wy @ rows
    return (_to_8_bit(out) if eight_bit else out).to(x.dtype)
