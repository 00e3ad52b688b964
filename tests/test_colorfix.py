"""Colour fixes: AdaIN matches channel statistics, wavelet keeps SR detail on the input's colours."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage.data import astronaut

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
