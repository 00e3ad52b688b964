"""Batched blur kernels of the Real-ESRGAN degradation model, one per sample, in torch.

Every kernel lives on a common odd grid (21x21 by default, the size Real-ESRGAN pads to),
with pixel offsets (x, y) from the centre, x along columns and y along rows. A kernel of
odd size k (7..21) is the same function restricted to |x|, |y| <= k // 2 and zero outside,
i.e. a k x k kernel zero-padded to the grid. All kernels are normalised to sum 1.

With Sigma = R(theta) diag(sigma_x^2, sigma_y^2) R(theta)^T and q = [x y] Sigma^-1 [x y]^T
(Wang et al., Real-ESRGAN, ICCVW 2021, Sec. 3.1):

    Gaussian               k ∝ exp(-q / 2)
    generalized Gaussian   k ∝ exp(-q^beta / 2)
    plateau                k ∝ 1 / (1 + q^beta)
    sinc (circular low-pass, cut-off omega_c)
                           k(r) ∝ omega_c J1(omega_c r) / (2 pi r),  k(0) ∝ omega_c^2 / (4 pi)

Isotropic variants are the anisotropic ones with sigma_y = sigma_x and theta = 0.
"""

from __future__ import annotations

import math

import torch

GRID = 21


def grid(size: int = GRID, device=None, dtype=torch.float32) -> torch.Tensor:
    """(size, size, 2) offsets (x, y) from the centre of an odd grid."""
    if size % 2 != 1:
        raise ValueError(f"kernel grid size must be odd, got {size}")
    ax = torch.arange(size, device=device, dtype=dtype) - size // 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


def support_mask(kernel_size: torch.Tensor, size: int = GRID) -> torch.Tensor:
    """(B, size, size) True inside each sample's k x k support (k odd, <= size)."""
    if bool((kernel_size % 2 != 1).any()) or bool((kernel_size > size).any()):
        raise ValueError(f"kernel sizes must be odd and <= {size}, got {kernel_size.tolist()}")
    offsets = grid(size, device=kernel_size.device).abs().amax(dim=-1)
    return offsets[None] <= (kernel_size // 2).view(-1, 1, 1).to(offsets.dtype)


def inverse_covariance(sigma_x: torch.Tensor, sigma_y: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) Sigma^-1 = R diag(1/sigma_x^2, 1/sigma_y^2) R^T."""
    c, s = torch.cos(theta), torch.sin(theta)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    inv_d = torch.diag_embed(torch.stack([sigma_x.pow(-2), sigma_y.pow(-2)], -1))
    return rot @ inv_d @ rot.transpose(-1, -2)


def quadratic_form(sigma_x, sigma_y, theta, size: int = GRID) -> torch.Tensor:
    """(B, size, size) q = p^T Sigma^-1 p at every grid offset p."""
    inv = inverse_covariance(sigma_x, sigma_y, theta)
    p = grid(size, device=inv.device, dtype=inv.dtype)
    return torch.einsum("hwi,bij,hwj->bhw", p, inv, p)


def _normalise(kernel: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        kernel = kernel * mask
    return kernel / kernel.sum(dim=(-2, -1), keepdim=True)


def gaussian(sigma_x, sigma_y, theta, kernel_size=None, size: int = GRID) -> torch.Tensor:
    """Anisotropic Gaussian kernels, (B, size, size)."""
    q = quadratic_form(sigma_x, sigma_y, theta, size)
    mask = support_mask(kernel_size, size) if kernel_size is not None else None
    return _normalise(torch.exp(-0.5 * q), mask)


def generalized_gaussian(sigma_x, sigma_y, theta, beta, kernel_size=None, size: int = GRID) -> torch.Tensor:
    """Generalized Gaussian kernels exp(-0.5 q^beta), (B, size, size)."""
    q = quadratic_form(sigma_x, sigma_y, theta, size)
    mask = support_mask(kernel_size, size) if kernel_size is not None else None
    return _normalise(torch.exp(-0.5 * q.pow(beta.view(-1, 1, 1))), mask)


def plateau(sigma_x, sigma_y, theta, beta, kernel_size=None, size: int = GRID) -> torch.Tensor:
    """Plateau-shaped kernels 1 / (1 + q^beta), (B, size, size)."""
    q = quadratic_form(sigma_x, sigma_y, theta, size)
    mask = support_mask(kernel_size, size) if kernel_size is not None else None
    return _normalise(1.0 / (q.pow(beta.view(-1, 1, 1)) + 1.0), mask)


def sinc(cutoff: torch.Tensor, kernel_size=None, size: int = GRID) -> torch.Tensor:
    """Circular low-pass (2-D sinc) kernels with cut-off omega_c in radians/pixel, (B, size, size)."""
    p = grid(size, device=cutoff.device, dtype=torch.float64)
    r = p.pow(2).sum(-1).sqrt()[None]
    w = cutoff.to(torch.float64).view(-1, 1, 1)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    kernel = w * torch.special.bessel_j1(w * safe_r) / (2 * math.pi * safe_r)
    kernel = torch.where(r > 0, kernel, w.pow(2) / (4 * math.pi))
    mask = support_mask(kernel_size, size) if kernel_size is not None else None
    return _normalise(kernel, mask).to(cutoff.dtype)


# Kernel families of Real-ESRGAN's `kernel_list`, in its order.
KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
SINC = len(KERNEL_TYPES)


def mixed(
    kind: torch.Tensor,
    kernel_size: torch.Tensor,
    sigma_x: torch.Tensor,
    sigma_y: torch.Tensor,
    theta: torch.Tensor,
    beta: torch.Tensor,
    cutoff: torch.Tensor,
    size: int = GRID,
) -> torch.Tensor:
    """One kernel per sample, of the family `kind` (index into KERNEL_TYPES, or SINC).

    Isotropic kinds are expected to come with sigma_y == sigma_x and theta == 0 (the sampler
    sets them so); every family is evaluated batched and the right one selected per sample.
    """
    family = torch.div(kind, 2, rounding_mode="floor")  # 0 Gaussian, 1 generalized, 2 plateau, 3 sinc
    sx, sy = sigma_x.double(), sigma_y.double()
    th, bt = theta.double(), beta.double()
    out = torch.empty(kind.shape[0], size, size, dtype=torch.float64, device=kind.device)
    builders = {
        0: lambda i: gaussian(sx[i], sy[i], th[i], kernel_size[i], size),
        1: lambda i: generalized_gaussian(sx[i], sy[i], th[i], bt[i], kernel_size[i], size),
        2: lambda i: plateau(sx[i], sy[i], th[i], bt[i], kernel_size[i], size),
        3: lambda i: sinc(cutoff[i].double(), kernel_size[i], size),
    }
    for fam, build in builders.items():
        idx = (family == fam).nonzero().flatten()
        if idx.numel():
            out[idx] = build(idx)
    return out.to(sigma_x.dtype)


def pulse(batch_size: int, size: int = GRID, device=None, dtype=torch.float32) -> torch.Tensor:
    """Identity kernels (a 1 at the centre), (B, size, size)."""
    out = torch.zeros(batch_size, size, size, device=device, dtype=dtype)
    out[:, size // 2, size // 2] = 1
    return out
