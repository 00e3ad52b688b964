"""Batched degradation operators: per-sample blur, Gaussian/Poisson noise, JPEG, USM sharpening.

Every operator takes a (B, C, H, W) batch in [0, 1] and per-sample parameters as (B,)
tensors, and runs on the batch's device. Noise is drawn from an explicit generator so
that fixed parameters and seed reproduce the exact output.
"""

from __future__ import annotations

import kornia
import torch
import torch.nn.functional as F


# FFT convolution beats direct convolution from this kernel size on, on images at least
# FFT_MIN_SIDE pixels a side (measured on CPU, 16x3 images: 21x21 at 256, 27 ms direct vs 18 ms
# FFT; at 128 about equal; at 64 direct is faster for every size).
FFT_MIN_KERNEL = 15
FFT_MIN_SIDE = 128
# On the CPU the FFT blur and kornia's JPEG run a few samples at a time, at most this many bytes
# counted at 8 per pixel and channel (2 samples of 256 px): a whole batch's temporaries are larger
# than the buffers glibc keeps for reuse after a free, so every call page-faulted fresh memory
# in. In chunks the FFT blur ran 1.5x and kornia's JPEG 1.7-3.6x faster (256-512 px, batch 16;
# benchmarks/RESULTS.md). Same results: every sample is processed on its own.
CPU_CHUNK_BYTES = 4 << 20


def blur(x: torch.Tensor, kernels: torch.Tensor, active: torch.Tensor | None = None) -> torch.Tensor:
    """Correlate each sample with its own (k, k) kernel (k odd), reflect padding. kernels: (B, k, k).

    `active` (B,) bool: samples to filter; the others pass through unchanged (their kernel is
    ignored). All-zero outer rings shared by every kernel are trimmed first (kernels of size 7
    padded to a 21 grid cost a 7x7 filter). Large kernels go through the FFT on the
    reflect-padded image, which equals the direct result (to float rounding) because the
    circular wrap-around only touches the cropped border; on the CPU a few samples at a time
    (`CPU_CHUNK_BYTES`), with the same result.
    """
    if active is not None:
        if not bool(active.any()):
            return x
        if not bool(active.all()):
            idx = active.nonzero().flatten()
            out = x.clone()
            out[idx] = blur(x[idx], kernels[idx])
            return out
    kernels = _trim(kernels)
    k = kernels.shape[-1]
    r = k // 2
    h, w = x.shape[-2:]
    if k < FFT_MIN_KERNEL or min(h, w) < FFT_MIN_SIDE or r >= min(h, w):
        return kornia.filters.filter2d(x, kernels.to(x.dtype), border_type="reflect")
    return _in_cpu_chunks(_fft_blur, x.shape[1] * _fft_size(h + 2 * r) * _fft_size(w + 2 * r), x, kernels)


def _in_cpu_chunks(fn, values_per_sample: int, x: torch.Tensor, *per_sample: torch.Tensor) -> torch.Tensor:
    """fn(x, *per_sample), on the CPU over chunks of `CPU_CHUNK_BYTES` (8 bytes per value)."""
    chunk = max(1, CPU_CHUNK_BYTES // (8 * values_per_sample)) if x.device.type == "cpu" else x.shape[0]
    if chunk >= x.shape[0]:
        return fn(x, *per_sample)
    parts = zip(x.split(chunk), *(t.split(chunk) for t in per_sample), strict=True)
    return torch.cat([fn(*p) for p in parts])


def _fft_blur(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    k = kernels.shape[-1]
    r = k // 2
    h, w = x.shape[-2:]
    size = (_fft_size(h + 2 * r), _fft_size(w + 2 * r))  # zeros beyond the padding never reach the crop
    padded = F.pad(x, (r, r, r, r), mode="reflect")
    kern = torch.zeros(kernels.shape[0], *size, device=x.device, dtype=x.dtype)
    kern[:, :k, :k] = kernels.to(x.dtype).flip(-1, -2)
    kern = torch.roll(kern, shifts=(-r, -r), dims=(-2, -1))
    spectrum = torch.fft.rfft2(padded, s=size) * torch.fft.rfft2(kern)[:, None]
    return torch.fft.irfft2(spectrum, s=size)[..., r : r + h, r : r + w]


def _trim(kernels: torch.Tensor) -> torch.Tensor:
    """Drop the outer rings of a (B, k, k) kernel stack that are zero in every kernel."""
    k = kernels.shape[-1]
    used = kernels.abs().amax(0) > 0
    if not bool(used.any()):
        return kernels[:, k // 2 : k // 2 + 1, k // 2 : k // 2 + 1]
    rows = used.any(1).nonzero().flatten()
    cols = used.any(0).nonzero().flatten()
    c = k // 2
    reach = int(max(c - rows[0], rows[-1] - c, c - cols[0], cols[-1] - c))
    return kernels[:, c - reach : c + reach + 1, c - reach : c + reach + 1]


def _fft_size(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (sizes the FFT handles fastest)."""
    best = 1 << (n - 1).bit_length()
    p3 = 1
    while p3 < best:
        p35 = p3
        while p35 < best:
            m = p35
            while m < n:
                m *= 2
            best = min(best, m)
            p35 *= 5
        p3 *= 3
    return best


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


def jpeg(x: torch.Tensor, quality: torch.Tensor, backend: str = "kornia") -> torch.Tensor:
    """JPEG compression with a per-sample quality factor.

    backend "kornia": kornia's differentiable codec, batched on any device (continuous quality).
    backend "libjpeg": the real codec through torchvision (libjpeg-turbo on CPU, nvJPEG on CUDA),
    integer quality, one encode/decode call per distinct quality; 7-8x faster on CPU.
    """
    quality = quality.to(x.dtype).expand(x.shape[0])  # one factor for all, or one per sample
    if backend == "kornia":
        codec = kornia.enhance.jpeg_codec_differentiable
        return _in_cpu_chunks(codec, x[0].numel(), x.clamp(0, 1), quality).clamp(0, 1)
    if backend != "libjpeg":
        raise ValueError(f"unknown JPEG backend '{backend}' (kornia or libjpeg)")
    from torchvision.io import decode_jpeg, encode_jpeg

    codes = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8)
    out = torch.empty_like(x)
    q = quality.round().long().cpu()
    for value in q.unique().tolist():
        idx = (q == value).nonzero().flatten().tolist()
        encoded = encode_jpeg([codes[i] for i in idx], quality=int(value))
        decoded = decode_jpeg(encoded, device=x.device)
        out[idx] = torch.stack(decoded).to(x.dtype) / 255
    return out


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

