"""Tiled single-step inference: the UNet on overlapping latent tiles blended with Gaussian weights.

A latent too large for one UNet call is cut into tiles of `tile` x `tile` latent pixels with
`overlap` pixels shared between neighbours (the last row/column of tiles is shifted to end at
the border, so every tile is full size); tiles go through the UNet `batch` at a time and
are blended with a separable Gaussian weight (sigma = tile / 4, as in Mixture-of-Diffusers /
StableSR tiling), normalised by the summed weights. A latent that fits in one tile is not
tiled at all. The VAE encoder and decoder can be tiled by diffusers' own `enable_tiling`.

Not yet a drop-in for the untiled model: GroupNorm statistics and attention see only the
tile, so on the tiny random UNet the tiled clean latent differs from the untiled one by 14-25%
of its mean magnitude (less with more overlap). `OneStepSR(latent_tile=..., vae_tiling=...)`
uses it at inference; global normalisation statistics (a tight tiled == untiled match), an
automatic memory budget and the seam check at tile borders are issue 7's remaining work.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile` overlapping by at least `overlap`."""
    if size <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be within [0, tile), got {overlap} for tile {tile}")
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def gaussian_weight(tile_h: int, tile_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(tile_h, tile_w) separable Gaussian centred on the tile, sigma a quarter of each side."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, device=device, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (n / 4)) ** 2)

    return torch.outer(axis(tile_h), axis(tile_w)).to(dtype)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int = 96, overlap: int = 32,
                batch: int = 4) -> torch.Tensor:
    """`fn` (shape-preserving on latents, e.g. the UNet's clean-latent estimate) on overlapping
    tiles of z (B, C, h, w), blended with Gaussian weights; `fn(z)` itself when z fits one tile."""
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return fn(z)
    th, tw = min(tile, h), min(tile, w)
    boxes = [(y, x) for y in tile_starts(h, th, min(overlap, th - 1)) for x in tile_starts(w, tw, min(overlap, tw - 1))]
    weight = gaussian_weight(th, tw, z.device, torch.float32)
    out = None
    norm = torch.zeros(1, 1, h, w, device=z.device, dtype=torch.float32)
    for i in range(0, len(boxes), batch):
        chunk = boxes[i : i + batch]
        tiles = torch.cat([z[..., y : y + th, x : x + tw] for y, x in chunk])
        result = fn(tiles).float()
        if out is None:
            out = torch.zeros(b, result.shape[1], h, w, device=z.device, dtype=torch.float32)
        for k, (y, x) in enumerate(chunk):
            out[..., y : y + th, x : x + tw] += result[k * b : (k + 1) * b] * weight
            norm[..., y : y + th, x : x + tw] += weight
    return (out / norm).to(z.dtype)
