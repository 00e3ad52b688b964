"""Colour fixes: AdaIN matches channel statistics, wavelet keeps SR detail on the input's colours."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from skimage.data import astronaut, coffee

from headsup.inference.colorfix import adain, color_fix, wavelet, wavelet_split


@pytest.fixture(scope="module")
def pair():
    hq = (torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255)[None, :, :256, :256]
    lq = F.interpolate(hq, scale_factor=0.25, mode="area")
    shifted = (hq * torch.tensor([0.8, 1.0, 1.15]).view(1, 3, 1, 1) + 0.05).clamp(0, 1)  # a colour cast
    return hq, lq, shifted


def test_adain_matches_the_reference_statistics(pair):
    hq, lq, shifted = pair
    out = adain(shifted, lq)
    assert torch.allclose(out.mean((2, 3)), lq.mean((2, 3)), atol=0.01)
    assert (out - hq).abs().mean() < (shifted - hq).abs().mean()


def test_adain_output_has_the_reference_mean_and_std_per_channel(pair):
    hq, lq, _ = pair
    sr = hq ** torch.tensor([0.6, 1.0, 1.8]).view(1, 3, 1, 1) * 0.7  # per-channel gamma and gain: not affine
    reference = 0.3 + 0.4 * lq  # mid-range, so that the output is not clipped
    out = adain(sr, reference)[0].numpy().reshape(3, -1).astype(np.float64)
    assert 0 < out.min() and out.max() < 1
    ref = reference[0].numpy().reshape(3, -1).astype(np.float64)
    np.testing.assert_allclose(out.mean(1), ref.mean(1), atol=1e-5)
    np.testing.assert_allclose(out.std(1, ddof=1), ref.std(1, ddof=1), rtol=1e-4)
    assert np.abs(sr[0].numpy().reshape(3, -1).std(1) - ref.std(1)).min() > 0.02  # the std had to change


def _stablesr_low(x: np.ndarray, levels: int = 5) -> np.ndarray:
    """StableSR's wavelet low band of a (C, H, W) array: `levels` dilated binomial blurs, edge-replicated."""
    low = x.astype(np.float64)
    for i in range(levels):
        d = 2**i
        kernel = np.zeros((2 * d + 1, 2 * d + 1))
        kernel[::d, ::d] = np.outer([1, 2, 1], [1, 2, 1]) / 16
        low = np.stack([ndimage.convolve(c, kernel, mode="nearest") for c in low])
    return low


def test_wavelet_is_sr_high_band_plus_reference_low_band_as_stablesr():
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    other = torch.from_numpy(coffee()).permute(2, 0, 1).float() / 255
    sr = (0.2 + 0.6 * img[:, 20:68, 170:250])[None]  # 48 x 80, not square; mid-range: no clipping
    reference = (0.3 + 0.4 * other[:, 100:148, 200:280])[None]
    s, r = sr[0].numpy().astype(np.float64), reference[0].numpy().astype(np.float64)
    expected = (s - _stablesr_low(s)) + _stablesr_low(r)
    assert 0 < expected.min() and expected.max() < 1
    np.testing.assert_allclose(wavelet(sr, reference)[0].numpy(), expected, atol=1e-5)
    _, low = wavelet_split(sr)
    np.testing.assert_allclose(low[0].numpy(), _stablesr_low(s), atol=1e-5)


def test_wavelet_split_is_exact_and_fix_removes_the_cast_keeping_detail(pair):
    hq, lq, shifted = pair
    high, low = wavelet_split(shifted)
    assert torch.allclose(high + low, shifted, atol=1e-6)
    out = wavelet(shifted, lq)
    assert out.shape == hq.shape
    cast = (shifted.mean((2, 3)) - hq.mean((2, 3))).abs().max()
    assert (out.mean((2, 3)) - hq.mean((2, 3))).abs().max() < 0.3 * cast  # colours follow the input
    detail = wavelet_split(out)[0]
    assert torch.corrcoef(torch.stack([detail.flatten(), wavelet_split(shifted)[0].flatten()]))[0, 1] > 0.9
    assert torch.equal(color_fix(shifted, lq, "none"), shifted)
    with pytest.raises(ValueError, match="colour fix"):
        color_fix(shifted, lq, "histogram")


def test_color_fix_aligns_to_the_upsampled_input_as_osediff():
    """OSEDiff's test script takes AdaIN statistics from the bicubic-upsampled input, not the LQ itself."""
    from PIL import Image

    hq = astronaut()[:256, :256]
    lq_img = Image.fromarray(hq).resize((64, 64), Image.BICUBIC)
    up = np.asarray(lq_img.resize((256, 256), Image.BICUBIC), dtype=np.float64).reshape(-1, 3).T / 255  # Pillow's
    lq = torch.from_numpy(np.array(lq_img)).permute(2, 0, 1)[None].float() / 255
    sr = 0.25 + 0.5 * torch.from_numpy(hq).permute(2, 0, 1)[None].float() / 255
    out = color_fix(sr, lq, "adain")[0].numpy().reshape(3, -1).astype(np.float64)
    small = lq[0].numpy().reshape(3, -1).astype(np.float64)
    lq_gap = np.abs(small.std(1) - up.std(1))  # upsampling smooths: about 0.5% less spread than the LQ's
    assert lq_gap.min() > 1e-3
    assert (np.abs(out.std(1) - up.std(1)) < 0.1 * lq_gap).all()
    np.testing.assert_allclose(out.mean(1), up.mean(1), atol=1e-3)
