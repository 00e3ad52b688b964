"""Tiled latent inference: coverage, exactness for pointwise functions, closeness on the tiny UNet."""

from __future__ import annotations

import pytest
import torch

from headsup.inference.tiling import gaussian_weight, tile_starts, tiled_apply
from headsup.models.generator import OneStepSR
from headsup.testing.tiny import TinySD


@pytest.mark.parametrize("size, tile, overlap", [(333, 96, 32), (96, 96, 32), (40, 96, 32), (200, 64, 0)])
def test_tiles_cover_every_pixel(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    covered = torch.zeros(size, dtype=torch.bool)
    for s in starts:
        covered[s : s + min(tile, size)] = True
        assert 0 <= s and s + min(tile, size) <= size
    assert covered.all()
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_pointwise_functions_are_exact_and_small_inputs_are_not_tiled():
    z = torch.randn(2, 4, 83, 131)
    calls = []

    def fn(t):
        calls.append(t.shape)
        return t * 2 + 1

    assert torch.allclose(tiled_apply(fn, z, tile=32, overlap=8, batch=3), z * 2 + 1, atol=1e-5)
    assert all(c[-2:] == (32, 32) for c in calls) and max(c[0] for c in calls) <= 3 * 2  # batches of tiles
    calls.clear()
    small = torch.randn(1, 4, 20, 30)
    assert torch.equal(tiled_apply(fn, small, tile=32), small * 2 + 1) and len(calls) == 1
    w = gaussian_weight(8, 12)
    assert w.shape == (8, 12) and float(w.min()) > 0 and w[3:5, 5:7].min() == w.max()


def test_tiled_unet_approaches_untiled_as_overlap_grows():
    # GroupNorm statistics and attention see only the tile, so a tiled UNet is not the untiled one;
    # more overlap and larger tiles bring it closer (a tight match is still open, see the module)
    torch.manual_seed(0)
    gen = OneStepSR(TinySD()).eval()
    lq = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        z = gen.encode(lq)  # 96 x 160 latent (the tiny VAE does not downsample)
        whole = gen.denoise(z)
        errors = [float((tiled_apply(gen.denoise, z, tile=t, overlap=o) - whole).abs().mean() / whole.abs().mean())
                  for t, o in ((64, 4), (64, 32), (80, 40))]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2


def test_generator_tiles_at_inference_only_and_keeps_the_exact_size():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), latent_tile=32, latent_overlap=8, vae_tiling=True).eval()
    lq = torch.rand(1, 3, 21, 35)  # odd size, a 84 x 140 latent: several tiles
    calls = []
    denoise = gen.denoise
    gen.denoise = lambda z, extra=None: calls.append(z.shape) or denoise(z, extra)
    with torch.no_grad():
        tiled = gen(lq)
        assert tiled.shape == (1, 3, 84, 140) and all(c[-2:] == (32, 32) for c in calls) and len(calls) > 1
        gen.latent_tile = None
        calls.clear()
        whole = gen(lq)
        assert len(calls) == 1 and not torch.equal(tiled, whole)
        assert (tiled - whole).abs().mean() < 0.1  # same image up to the tiles' differences
    assert not gen.vae.use_tiling  # VAE tiling is switched off again after the call
    gen.latent_tile = 32
    gen.train()
    calls.clear()
    gen(lq).mean().backward()  # training never tiles
    assert len(calls) == 1
