"""BicubicDegradation: exact shapes, reproducibility from params and seeds, 8-bit output."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headsup.degradations import BicubicDegradation


def test_plain_bicubic_matches_antialiased_interpolate():
    hq = torch.rand(2, 3, 32, 48)
    deg = BicubicDegradation(scale=4)
    lq = deg.degrade(hq)
    ref = F.interpolate(hq, size=(8, 12), mode="bicubic", antialias=True).clamp(0, 1)
    assert lq.shape == (2, 3, 8, 12)
    assert torch.allclose(lq, (ref * 255).round() / 255)


def test_same_params_same_lq_and_seeded_params():
    deg = BicubicDegradation(noise_prob=0.5, jpeg_prob=0.5)
    hq = torch.rand(8, 3, 32, 32)
    params = deg.sample(8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(deg(hq, params), deg(hq, params))
    again = deg.sample(8, generator=torch.Generator().manual_seed(1))
    assert all(torch.equal(params[k], again[k]) for k in params)
    other = deg.sample(8, generator=torch.Generator().manual_seed(2))
    assert not all(torch.equal(params[k], other[k]) for k in params)
    assert params["noise"].any() and params["jpeg"].any()


def test_noise_and_jpeg_change_the_image_and_stay_8_bit():
    hq = torch.rand(4, 3, 32, 32)
    clean = BicubicDegradation().degrade(hq)
    dirty = BicubicDegradation(noise_prob=1.0, noise_sigma=(20, 20), jpeg_prob=1.0, jpeg_quality=(30, 30)).degrade(hq)
    assert (dirty - clean).abs().mean() > 0.02
    assert torch.equal(dirty, (dirty * 255).round() / 255)


def test_index_seeded_params_do_not_depend_on_batching():
    deg = BicubicDegradation(noise_prob=0.5, jpeg_prob=0.5)
    whole = deg.sample_indexed([5, 6, 7])
    split = [deg.sample_indexed([s]) for s in (5, 6, 7)]
    for k in whole:
        assert torch.equal(whole[k], torch.cat([p[k] for p in split]))
