"""PSNR/SSIM follow BasicSR's conventions; checked against independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.data import astronaut
from skimage.metrics import structural_similarity

from headsup.metrics.full_reference import PSNR, SSIM, psnr, ssim


@pytest.fixture(scope="module")
def pair():
    hq = torch.from_numpy(astronaut()[:200, 100:300]).permute(2, 0, 1).float()[None] / 255
    noisy = (hq + 0.05 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return noisy, hq


def _y(x: torch.Tensor, border: int) -> np.ndarray:
    rgb = (x[0].permute(1, 2, 0).numpy().astype(np.float64) * 255).round()[border:-border, border:-border]
    return 16 + (rgb @ np.array([65.481, 128.553, 24.966])) / 255


def test_psnr_matches_numpy_formula(pair):
    sr, hq = pair
    a, b = _y(sr, 4), _y(hq, 4)
    expected = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    assert float(psnr(sr, hq, crop_border=4)) == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_skimage_gaussian_ssim(pair):
    sr, hq = pair
    a, b = _y(sr, 4), _y(hq, 4)
    expected = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert float(ssim(sr, hq, crop_border=4)) == pytest.approx(expected, abs=1e-4)


def test_rounding_to_8_bit_first(pair):
    _, hq = pair
    tiny_shift = (hq + 0.4 / 255).clamp(0, 1)  # below half a level: rounds back to the same image
    assert torch.isinf(psnr(tiny_shift, hq)) or float(psnr(tiny_shift, hq)) > 90


def test_metric_averages_per_image_scores(pair):
    sr, hq = pair
    metric = PSNR(crop_border=4)
    metric.update(sr, hq)
    metric.update(hq * 0.9, hq)
    expected = (float(psnr(sr, hq, 4)) + float(psnr(hq * 0.9, hq, 4))) / 2
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    s = SSIM(crop_border=4)
    s.update(hq, hq)
    assert float(s.compute()) == pytest.approx(1.0)


def test_shape_mismatch_is_an_error(pair):
    sr, hq = pair
    with pytest.raises(ValueError, match="differ"):
        PSNR().update(sr[..., :-1], hq)
