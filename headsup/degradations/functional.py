"""Batched degradation operators: per-sample blur, Gaussian/Poisson noise, JPEG, USM sharpening.

Every operator takes a (B, C, H, W) batch in [0, 1] and per-sample parameters as (B,)
tensors, and runs on the batch's device. Noise is drawn from an explicit generator so
that fixed parameters and seed reproduce the exact output.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


def blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve each sample with its own (k, k) kernel, reflect padding. kernels: (B, k, k)."""
    return kornia.filters.filter2d(x, kernels.to(x.dtype), border_type="reflect")


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def gaussian_noise(
    x: torch.Tensor, sigma: torch.Tensor, gray: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Additive Gaussian noise of std `sigma` (in [0, 1] units); `gray` samples share it across channels."""
    b, c, h, w = x.shape
    noise = torch.randn((b, c, h, w), generator=generator, device=x.device, dtype=x.dtype)
    noise = torch.where(gray.view(b, 1, 1, 1), noise[:, :1].expand(-1, c, -1, -1), noise)
    return x + noise * sigma.to(x.dtype).view(b, 1, 1, 1)


def _levels(x: torch.Tensor) -> torch.Tensor:
    """Per sample, 2^ceil(log2(number of distinct 8-bit values)) (Real-ESRGAN's Poisson scale)."""
    b = x.shape[0]
    codes = (x.clamp(0, 1) * 255).round().long().view(b, -1)
    hist = torch.zeros(b, 256, device=x.device, dtype=torch.long).scatter_add_(1, codes, torch.ones_like(codes))
    distinct = (hist > 0).sum(1).clamp_min(1).to(x.dtype)
    return torch.exp2(torch.ceil(torch.log2(distinct)))


def poisson_noise(
    x: torch.Tensor, scale: torch.Tensor, gray: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Signal-dependent Poisson noise times `scale`; `gray` samples get luminance noise on all channels."""
    b, c = x.shape[:2]
    noise = torch.zeros_like(x)
    for is_gray, source in ((False, x), (True, _gray(x))):
        idx = (gray == is_gray).nonzero().flatten()
        if idx.numel() == 0:
            continue
        img = (source[idx].clamp(0, 1) * 255).round() / 255
        vals = _levels(img).view(-1, 1, 1, 1)
        sampled = torch.poisson(img.float() * vals.float(), generator=generator).to(x.dtype) / vals
        noise[idx] = (sampled - img).expand(-1, c, -1, -1)
    return x + noise * scale.to(x.dtype).view(b, 1, 1, 1)


def jpeg(x: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
    """JPEG compression with a per-sample quality factor (kornia's differentiable codec)."""
    return kornia.enhance.jpeg_codec_differentiable(x.clamp(0, 1), quality.to(x.dtype)).clamp(0, 1)


def resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Resize with one of Real-ESRGAN's modes: area, bilinear, bicubic."""
    if mode == "area":
        return F.interpolate(x, size=size, mode="area")
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def usm_sharpen(x: torch.Tensor, radius: int = 50, weight: float = 0.5, threshold: float = 10.0) -> torch.Tensor:
    """Unsharp masking of the GT, as Real-ESRGAN sharpens its targets.

    Gaussian blur of size `radius` (made odd: 51 for the default) with OpenCV's default sigma
    for that size (8.0), as BasicSR's USMSharp; the sharpened image is blended in where
    |residual| exceeds `threshold` 8-bit levels, through a blurred (soft) mask.
    """
    size = radius + 1 if radius % 2 == 0 else radius
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    ax = torch.arange(size, device=x.device, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(ax**2) / (2 * sigma**2))
    g = g / g.sum()
    kernel = torch.outer(g, g).to(x.dtype)[None].expand(x.shape[0], -1, -1)
    blurred = blur(x, kernel)
    residual = x - blurred
    mask = (residual.abs() * 255 > threshold).to(x.dtype)
    soft = blur(mask, kernel)
    sharp = (x + weight * residual).clamp(0, 1)
    return soft * sharp + (1 - soft) * x


def scaled_size(h: int, w: int, scale: float) -> tuple[int, int]:
    """Size after scaling by `scale` (at least 1 pixel), as int() truncation like Real-ESRGAN."""
    return max(1, int(h * scale)), max(1, int(w * scale))

