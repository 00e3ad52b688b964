"""Pillow-compatible bicubic resampling against Pillow itself."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

from headsup.degradations.resample import pil_bicubic_resize


@pytest.mark.parametrize("src, dst", [((64, 48), (256, 192)), ((50, 37), (125, 93)), ((64, 64), (40, 24))])
def test_equals_pillow_bicubic_in_float_and_within_a_level_in_8_bit(src, dst):
    rgb = np.asarray(Image.fromarray(astronaut()).resize(src[::-1], Image.BICUBIC))  # an 8-bit LQ (w, h) = src
    x = torch.from_numpy(rgb).permute(2, 0, 1).double()[None] / 255
    ours = pil_bicubic_resize(x, dst)[0].permute(1, 2, 0).numpy()
    # Pillow's float mode ("F"): no rounding between its two passes, so the filters must agree exactly
    channels = [np.asarray(Image.fromarray((rgb[..., c] / 255).astype(np.float32), mode="F")
                          .resize(dst[::-1], Image.BICUBIC)) for c in range(3)]
    assert np.abs(ours - np.stack(channels, -1)).max() < 1e-5
    # Pillow's 8-bit mode rounds and clips between its passes; eight_bit does too (ties may differ)
    pillow_8bit = np.asarray(Image.fromarray(rgb).resize(dst[::-1], Image.BICUBIC)).astype(np.float64)
    ours_8bit = pil_bicubic_resize(x, dst, eight_bit=True)[0].permute(1, 2, 0).numpy() * 255
    diff = np.abs(ours_8bit - pillow_8bit)
    assert diff.max() <= 1 + 1e-6 and diff.mean() < 0.01, (diff.max(), diff.mean())
    torch_bicubic = torch.nn.functional.interpolate(x, size=dst, mode="bicubic", align_corners=False)[0]
    assert np.abs(torch_bicubic.permute(1, 2, 0).numpy() - np.stack(channels, -1)).max() > 1e-2  # another filter


def test_generator_upsample_option_feeds_pillows_bicubic_to_the_vae():
    from headsup.models.generator import OneStepSR
    from headsup.testing.tiny import TinySD

    rgb = np.asarray(Image.fromarray(astronaut()).resize((24, 16), Image.BICUBIC))
    lq = torch.from_numpy(rgb).permute(2, 0, 1).float()[None] / 255
    gen = OneStepSR(TinySD(), upsample="pil_bicubic").eval()
    pillow = np.asarray(Image.fromarray(rgb).resize((96, 64), Image.BICUBIC)).astype(np.float64)
    up = gen.upsampled(lq)[0].permute(1, 2, 0).numpy() * 255
    assert up.shape == pillow.shape and np.abs(up - pillow).max() <= 1 + 1e-4
    with torch.no_grad():
        pil_out = gen(lq)
        gen.upsample = "bicubic"  # the same weights, torch's bicubic
        assert not torch.allclose(gen(lq), pil_out, atol=1e-4)
    with pytest.raises(ValueError, match="upsample"):
        OneStepSR(TinySD(), upsample="lanczos")
