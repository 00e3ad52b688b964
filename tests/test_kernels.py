"""Blur kernels against closed-form values: normalisation, support, symmetry, sinc frequency response."""

from __future__ import annotations

import math

import pytest
import torch

from headsup.degradations import kernels as K


def t(*values, dtype=torch.float64):
    return torch.tensor(values, dtype=dtype)


def test_isotropic_gaussian_equals_analytic_formula():
    sigma = t(0.7, 1.5, 3.0)
    out = K.gaussian(sigma, sigma, t(0, 0, 0))
    p = K.grid(dtype=torch.float64)
    r2 = p.pow(2).sum(-1)
    for i, s in enumerate(sigma):
        ref = torch.exp(-r2 / (2 * s**2))
        assert torch.allclose(out[i], ref / ref.sum(), atol=1e-12)


def test_axis_aligned_anisotropic_is_separable_and_rotation_swaps_axes():
    sx, sy = t(1.0), t(2.5)
    out = K.gaussian(sx, sy, t(0.0))[0]
    p = K.grid(dtype=torch.float64)
    ref = torch.exp(-p[..., 0] ** 2 / (2 * sx**2) - p[..., 1] ** 2 / (2 * sy**2))
    assert torch.allclose(out, ref / ref.sum(), atol=1e-12)
    rotated = K.gaussian(sx, sy, t(math.pi / 2))[0]
    assert torch.allclose(rotated, out.T, atol=1e-12)


def test_generalized_with_beta_one_is_gaussian_and_plateau_formula():
    sx, sy, th = t(1.2), t(2.0), t(0.4)
    assert torch.allclose(K.generalized_gaussian(sx, sy, th, t(1.0)), K.gaussian(sx, sy, th), atol=1e-12)
    q = K.quadratic_form(sx, sy, th)[0]
    ref = 1 / (1 + q**1.5)
    assert torch.allclose(K.plateau(sx, sy, th, t(1.5))[0], ref / ref.sum(), atol=1e-12)


def test_support_normalisation_and_point_symmetry_for_every_family():
    n = 7 * 6
    kind = torch.arange(7).repeat_interleave(6)
    size = torch.tensor([7, 9, 13, 15, 19, 21]).repeat(7)
    gen = torch.Generator().manual_seed(0)
    sx = torch.rand(n, generator=gen, dtype=torch.float64) * 2.8 + 0.2
    sy = torch.rand(n, generator=gen, dtype=torch.float64) * 2.8 + 0.2
    th = (torch.rand(n, generator=gen, dtype=torch.float64) * 2 - 1) * math.pi
    beta = torch.rand(n, generator=gen, dtype=torch.float64) * 3 + 0.5
    cutoff = torch.rand(n, generator=gen, dtype=torch.float64) * 2 + 1
    out = K.mixed(kind, size, sx, sy, th, beta, cutoff)
    assert out.shape == (n, 21, 21)
    assert torch.allclose(out.sum(dim=(1, 2)), torch.ones(n, dtype=out.dtype), atol=1e-10)
    mask = K.support_mask(size)
    assert (out[~mask] == 0).all()
    assert torch.allclose(out, out.flip(-1).flip(-2), atol=1e-12)
    assert (out[kind < K.SINC] >= 0).all()
    # a 7x7 kernel has exactly its 49 taps inside the grid
    assert int(mask[0].sum()) == 49


def test_sinc_is_low_pass_at_the_requested_cutoff():
    for cutoff in (math.pi / 3, math.pi / 2, 2.0):
        kernel = K.sinc(t(cutoff), kernel_size=torch.tensor([21]))[0]
        n = 256
        response = torch.fft.fft2(kernel, s=(n, n)).abs()
        freqs = torch.fft.fftfreq(n, dtype=torch.float64) * 2 * math.pi
        radius = (freqs[:, None] ** 2 + freqs[None, :] ** 2).sqrt()
        passband = response[radius < 0.7 * cutoff]
        stopband = response[(radius > 1.3 * cutoff) & (radius < math.pi)]
        assert passband.min() > 0.8, (cutoff, float(passband.min()))
        assert stopband.max() < 0.2, (cutoff, float(stopband.max()))


def test_sinc_centre_value_and_bad_sizes():
    k = K.sinc(t(1.0))[0]
    assert k[10, 10] == k.max()
    with pytest.raises(ValueError, match="odd"):
        K.support_mask(torch.tensor([8]))
    with pytest.raises(ValueError, match="odd"):
        K.grid(20)


def test_pulse_is_identity():
    p = K.pulse(2)
    assert p.sum() == 2 and p[0, 10, 10] == 1
