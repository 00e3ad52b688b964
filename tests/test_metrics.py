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


def test_agrees_with_pyiqa_when_conventions_match(pair):
    """pyiqa's `psnr`/`ssim` default to the Y of YIQ, not BT.601 YCbCr (1.3 dB apart on this pair);
    with `color_space="ycbcr"` PSNR agrees. pyiqa's SSIM also rounds Y to integers (MATLAB's uint8
    `rgb2ycbcr`), so it equals ours on an 8-bit-rounded luminance image."""
    import pyiqa  # installed by `make test` (--no-deps); these metrics need no weights

    sr, hq = ((x * 255).round() / 255 for x in pair)  # pyiqa does not quantise its inputs
    kw = dict(crop_border=4, device="cpu")
    y_psnr = pyiqa.create_metric("psnr", test_y_channel=True, color_space="ycbcr", **kw)(sr, hq)
    assert float(y_psnr) == pytest.approx(float(psnr(sr, hq, 4)), abs=1e-4)
    rgb_psnr = pyiqa.create_metric("psnr", test_y_channel=False, **kw)(sr, hq)
    assert float(rgb_psnr) == pytest.approx(float(psnr(sr, hq, 4, y_channel=False)), abs=1e-4)
    rgb_ssim = pyiqa.create_metric("ssimc", **kw)(sr, hq)
    assert float(rgb_ssim) == pytest.approx(float(ssim(sr, hq, 4, y_channel=False)), abs=1e-4)
    y_ssim = pyiqa.create_metric("ssim", test_y_channel=True, color_space="ycbcr", **kw)(sr, hq)
    y_rounded = [torch.from_numpy(_y(x, 4).round())[None, None] / 255 for x in (sr, hq)]
    assert float(y_ssim) == pytest.approx(float(ssim(*y_rounded, y_channel=False)), abs=1e-4)
    assert abs(float(y_ssim) - float(ssim(sr, hq, 4))) > 1e-4  # the rounding is a real difference
    yiq = pyiqa.create_metric("psnr", test_y_channel=True, **kw)(sr, hq)
    assert abs(float(yiq) - float(y_psnr)) > 0.5  # and pyiqa's default Y is another quantity
