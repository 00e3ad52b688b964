"""Tiled latent inference: coverage, exactness for pointwise functions, closeness on the tiny UNet."""

from __future__ import annotations

import pytest
import torch

from headsup.models.tiling import gaussian_weight, tile_seam_score, tile_starts, tiled_apply
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


@pytest.fixture(scope="module")
def pretrained(tiny_sd_dir):
    """The pretrained tiny backbone on a real photo: 300 x 244 output, several tiles per stage."""
    from skimage.data import astronaut

    from headsup.models.backbone import DiffusersFolder

    torch.manual_seed(0)
    gen = OneStepSR(DiffusersFolder(str(tiny_sd_dir)), tiling="always", tile_size=96, tile_overlap=32).eval()
    img = torch.from_numpy(astronaut()).permute(2, 0, 1)[None].float() / 255
    lq = torch.nn.functional.interpolate(img, size=(75, 61), mode="area")
    with torch.no_grad():
        gen.tiling = "never"
        whole = gen(lq)
    gen.tiling = "always"
    return gen, lq, whole


def _tile_only(gen, stage):
    should = OneStepSR._should_tile.__get__(gen)
    gen._should_tile = lambda s, x, f: should(s, x, f) and s == stage


@pytest.mark.parametrize("stage, passes, mean_tol, max_tol", [("decode", 4, 1e-3, 5e-3), ("encode", 4, 5e-3, 0.05),
                                                             ("unet", 2, 0.03, 0.1)])
def test_tiled_stage_matches_untiled_with_whole_image_norm_statistics(pretrained, stage, passes, mean_tol, max_tol):
    gen, lq, whole = pretrained
    _tile_only(gen, stage)
    errors = {}
    try:
        with torch.no_grad():
            for p in (0, passes):
                gen.norm_passes = p
                out = gen(lq)
                assert gen.last_tiling[stage] is not None and out.shape == whole.shape
                errors[p] = ((out - whole).abs().mean().item(), (out - whole).abs().max().item())
    finally:
        del gen._should_tile
    # per-tile GroupNorm statistics: a few percent off; whole-image statistics: close to untiled
    assert errors[0][0] > 0.01
    assert errors[passes][0] < mean_tol and errors[passes][1] < max_tol, errors
    assert errors[passes][0] < errors[0][0] / 3


def test_no_seam_at_tile_edges(pretrained):
    gen, lq, whole = pretrained
    with torch.no_grad():
        gen.norm_passes = 1
        tiled = gen(lq)
    h, w = whole.shape[-2:]
    rows = sorted({e for v in gen.last_tiling.values() for e in v[0] if e < h})
    cols = sorted({e for v in gen.last_tiling.values() for e in v[1] if e < w})
    assert rows and cols
    assert abs(tile_seam_score(tiled, rows, cols) - tile_seam_score(whole, rows, cols)) < 0.05
    stepped = whole.clone()
    stepped[..., cols[0]:] *= 0.95  # a 5% brightness step at one tile edge is a visible seam
    assert tile_seam_score(stepped, [], cols[:1]) > 0.1


def test_tiled_unet_of_random_weights_approaches_untiled_as_overlap_grows():
    # attention sees only its tile, so even with whole-image norm statistics a tiled UNet is close
    # to, not equal to, the untiled one; more overlap and larger tiles bring it closer
    torch.manual_seed(0)
    gen = OneStepSR(TinySD()).eval()
    lq = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        z = gen.encode(lq)  # 96 x 160 latent (the tiny VAE does not downsample)
        whole = gen.denoise(z)
        errors = [float((tiled_apply(gen.denoise, z, tile=t, overlap=o) - whole).abs().mean() / whole.abs().mean())
                  for t, o in ((64, 4), (64, 32), (80, 40))]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.2


def test_scaled_tiles_map_onto_whole_output_pixels():
    z = torch.randn(1, 2, 40, 56)
    up = tiled_apply(lambda t: torch.nn.functional.interpolate(t, scale_factor=8, mode="nearest"), z, tile=16,
                     overlap=8, factor=8)
    assert torch.allclose(up, torch.nn.functional.interpolate(z, scale_factor=8, mode="nearest"), atol=1e-5)
    img = torch.randn(1, 2, 320, 448)
    down = tiled_apply(lambda t: torch.nn.functional.avg_pool2d(t, 8), img, tile=128, overlap=64, factor=1 / 8,
                       align=8)
    assert torch.allclose(down, torch.nn.functional.avg_pool2d(img, 8), atol=1e-5)
    with pytest.raises(ValueError, match="whole pixels"):
        tiled_apply(lambda t: t[..., ::8, ::8], torch.randn(1, 1, 100, 100), tile=36, overlap=10, factor=1 / 8)


def test_generator_tiles_at_inference_only_and_keeps_the_exact_size():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), tiling="always", tile_size=32, tile_overlap=8).eval()
    lq = torch.rand(1, 3, 21, 35)  # odd size, a 84 x 140 latent: several tiles
    calls = []
    denoise = gen.denoise
    gen.denoise = lambda z, extra=None, embeds=None: calls.append(z.shape) or denoise(z, extra, embeds)
    with torch.no_grad():
        tiled = gen(lq)
        assert tiled.shape == (1, 3, 84, 140) and all(c[-2:] == (32, 32) for c in calls) and len(calls) > 1
        assert all(gen.last_tiling[s] is not None for s in ("encode", "unet", "decode"))
        gen.tiling = "never"
        calls.clear()
        whole = gen(lq)
        assert len(calls) == 1 and not torch.equal(tiled, whole)
        assert all(v is None for v in gen.last_tiling.values())
        gen.tiling = "always"
        small = gen(torch.rand(1, 3, 7, 5))  # smaller than one tile: never tiled
        assert small.shape == (1, 3, 28, 20) and all(v is None for v in gen.last_tiling.values())
    gen.train()
    calls.clear()
    gen(lq).mean().backward()  # training never tiles
    assert len(calls) == 1


def test_auto_tiling_follows_the_memory_budget():
    gen = OneStepSR(TinySD(), tiling="auto", tile_size=32, tile_overlap=8).eval()
    lq = torch.rand(1, 3, 21, 35)
    with torch.no_grad():
        gen.memory_budget_gb = 1e-4  # 100 KiB: every stage larger than one tile is tiled
        gen(lq)
        assert all(gen.last_tiling[s] is not None for s in ("encode", "unet", "decode"))
        gen.memory_budget_gb = 100.0
        gen(lq)
        assert all(v is None for v in gen.last_tiling.values())
    need = gen.stage_memory("decode", torch.Size([1, 4, 84, 140]), torch.float32)
    assert need == pytest.approx(2 * gen.stage_memory("decode", torch.Size([1, 4, 42, 140]), torch.float32))
    assert gen.stage_memory("decode", torch.Size([1, 4, 84, 140]), torch.bfloat16) == pytest.approx(need / 2)
    with pytest.raises(ValueError, match="tiling"):
        OneStepSR(TinySD(), tiling="sometimes")


def test_norm_statistics_reach_attention_blocks_that_flatten_the_feature_map():
    # SD's VAE normalises (B, C, h*w) inside its mid-block attention: those statistics are gathered too
    from diffusers import AutoencoderKL

    from headsup.models.tiling import SyncGroupNorm

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[16, 16], down_block_types=["DownEncoderBlock2D"] * 2,
                        up_block_types=["UpDecoderBlock2D"] * 2, norm_num_groups=4, latent_channels=4,
                        mid_block_add_attention=True).eval()
    z = torch.randn(1, 4, 40, 56)
    gathered = []
    finish = SyncGroupNorm.finish_pass
    SyncGroupNorm.finish_pass = lambda self: gathered.append(len(self._sums)) or finish(self)
    try:
        with torch.no_grad():
            whole = vae.decode(z).sample
            tiled = tiled_apply(lambda t: vae.decode(t).sample, z, tile=24, overlap=12, factor=2, network=vae,
                                norm_passes=2)
    finally:
        SyncGroupNorm.finish_pass = finish
    calls = sum(isinstance(m, torch.nn.GroupNorm) for m in vae.decoder.modules())
    assert gathered == [calls, calls]  # every GroupNorm of the decoder, the attention's included
    assert tiled.shape == whole.shape


def test_diverging_norm_statistics_fall_back_to_per_tile_normalisation(pretrained, monkeypatch):
    # on random SD 2.1 VAE weights the passes diverge (changes 0.39, then 396): such statistics are not used
    from headsup.models import tiling

    gen, lq, _ = pretrained
    z = torch.rand(1, 4, 80, 120)
    with torch.no_grad():
        per_tile = tiling.tiled_apply(gen.decode, z, tile=48, overlap=16, network=gen.vae, norm_passes=0)
        finish = tiling.SyncGroupNorm.finish_pass
        monkeypatch.setattr(tiling.SyncGroupNorm, "finish_pass", lambda self: (finish(self), 5.0)[1])
        with pytest.warns(UserWarning, match="did not converge"):
            out = tiling.tiled_apply(gen.decode, z, tile=48, overlap=16, network=gen.vae, norm_passes=2)
    assert torch.equal(out, per_tile)


def test_blend_weights_fade_to_zero_at_inner_tile_edges_only():
    """A tile's Gaussian blend weight fades to ~0 on sides shared with another tile, not at the image border."""
    from headsup.models.tiling import tile_weight

    gauss = gaussian_weight(32, 32)
    w = tile_weight(gauss, 8, top=False, bottom=True, left=False, right=True)  # the top-left tile of a grid
    assert w[-1].max() < 0.01 * w.max() and w[:, -1].max() < 0.01 * w.max()  # inner edges: ~0
    assert torch.equal(w[0, :-8], gauss[0, :-8]) and torch.equal(w[:-8, 0], gauss[:-8, 0]) and w[0, 0] > 0

    def marked(t):  # 1 on each tile's own border pixels (where its convolutions saw padding), 0 inside
        out = torch.zeros_like(t)
        out[..., [0, -1], :] = 1
        out[..., :, [0, -1]] = 1
        return out

    out = tiled_apply(marked, torch.zeros(1, 1, 80, 80), tile=32, overlap=16)
    assert out[..., 1:-1, 1:-1].max() < 0.01  # inner tile edges barely reach the blend
    assert torch.allclose(out[..., 0, :], torch.ones(80))  # the image border keeps its (only) tile's value


def test_default_memory_budget_is_60_percent_of_free_gpu_memory_or_half_the_free_ram(monkeypatch):
    """Without memory_budget_gb, "auto" budgets 60% of the free GPU memory on CUDA, half the free RAM on the CPU."""
    import os

    from headsup.models import runtime as module

    assert 0 < module._available_ram() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")  # bytes
    gen = OneStepSR(TinySD(), tiling="auto", tile_size=32, tile_overlap=8).eval()
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * 2**30, 141 * 2**30))
    monkeypatch.setattr(module, "_available_ram", lambda: 8 * 2**30)
    assert gen._budget(torch.device("cuda", 0)) == pytest.approx(6 * 2**30)
    assert gen._budget(torch.device("cpu")) == pytest.approx(4 * 2**30)
    gen.memory_budget_gb = 1.5  # an explicit budget wins on both
    assert gen._budget(torch.device("cuda", 0)) == gen._budget(torch.device("cpu")) == 1.5 * 2**30
    gen.memory_budget_gb = None
    z = torch.zeros(1, 4, 84, 140)
    need = gen.stage_memory("decode", z.shape, torch.float32)
    with torch.no_grad():  # the CPU decision: tile when the stage needs more than half the free RAM
        monkeypatch.setattr(module, "_available_ram", lambda: 2.02 * need)
        assert not gen._should_tile("decode", z, 1)
        monkeypatch.setattr(module, "_available_ram", lambda: 1.98 * need)
        assert gen._should_tile("decode", z, 1)


def test_an_image_of_exactly_one_tile_is_not_tiled():
    """Every stage compares its size in latent pixels with the tile: an output of exactly `tile_size`
    latent pixels is one tile in every stage (the encoder's input counted in latent pixels, not image
    pixels); one latent row more tiles every stage."""
    gen = OneStepSR(TinySD(), tiling="always", tile_size=16, tile_overlap=4).eval()
    side = 16 * gen.vae_factor // gen.scale  # LQ pixels giving 16 latent pixels at the output
    with torch.no_grad():
        gen(torch.rand(1, 3, side, side))
        assert all(v is None for v in gen.last_tiling.values()), gen.last_tiling
        gen(torch.rand(1, 3, side + gen.size_multiple // gen.scale, side))
        assert all(v is not None for v in gen.last_tiling.values()), gen.last_tiling
