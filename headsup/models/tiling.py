"""Tiled inference with whole-image normalisation statistics.

A tensor too large for one call of a network is cut into tiles of `tile` x `tile` pixels with
`overlap` pixels shared between neighbours (the last row/column of tiles is shifted to end at
the border, so every tile is full size). Tiles go through the network `batch` at a time and are
blended with a separable Gaussian weight (sigma = tile / 4, as in Mixture-of-Diffusers / StableSR
tiling) that fades to zero over half the overlap at every edge shared with another tile, so the
tile's border pixels (where its convolutions saw padding) carry no weight and leave no step;
the weights are normalised by their sum. A tensor that fits in one tile is not tiled at all.
The network may change the resolution by a fixed `factor` (the VAE encoder 1/8, the decoder 8).

GroupNorm is the reason naive tiling does not reproduce the untiled network: each tile would
normalise with its own mean and variance. `SyncGroupNorm` makes every GroupNorm of the network
use statistics of the *whole* image instead. They are gathered in `norm_passes` extra passes over
the tiles: each GroupNorm call adds its input's sums, weighted by the share of each pixel that its
tile contributes to the blend (so every pixel counts once), to per-image accumulators; the next
pass normalises with the result. The first pass uses per-tile statistics, later passes the
estimate of the pass before, so the estimate converges to the untiled statistics layer by layer.
What stays per tile is the convolutions' view near tile borders (faded out by the blend) and
attention, which sees only its tile. Measured on the tiny pretrained model (tests/test_tiling.py,
README): the tiled VAE decoder reproduces the untiled one to a mean of 5e-5 after 4 passes. The
iteration need not converge (on random SD 2.1 VAE weights it blows up), so statistics that still
move by more than `DIVERGED` between passes are dropped, with a warning, for per-tile statistics.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from fractions import Fraction

import torch
import torch.nn as nn
import torch.nn.functional as F

from headsup.models.norm import group_stats, normalize


def tile_starts(size: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets covering [0, size) with tiles of `tile` overlapping by at least `overlap`;
    starts are multiples of `align` when size, tile and overlap are."""
    if size <= tile:
        return [0]
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be within [0, tile), got {overlap} for tile {tile}")
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(s - s % align for s in starts))


def tile_grid(h: int, w: int, tile: int, overlap: int, align: int = 1) -> tuple[list[int], list[int]]:
    """Row and column starts of the tiles `tiled_apply` cuts from an h x w input."""
    th, tw = min(tile, h), min(tile, w)
    return tile_starts(h, th, min(overlap, th - 1), align), tile_starts(w, tw, min(overlap, tw - 1), align)


def tile_edges(starts: list[int], tile: int, size: int) -> list[int]:
    """Positions inside (0, size) where a tile begins or ends: where a seam would show."""
    return sorted({p for s in starts for p in (s, s + tile) if 0 < p < size})


def tile_seam_score(image: torch.Tensor, rows: list[int], cols: list[int]) -> float:
    """Excess of the step across tile-edge lines over the typical step between neighbouring lines.

    For each edge column x, the mean |I[..., x] - I[..., x - 1]| over the image, divided by the same
    mean over every column (rows alike), averaged over the edges, minus 1: about 0 where tile
    edges look like any other line, clearly positive for a visible seam. No reference needed."""
    image = image.float()
    dx = (image[..., 1:] - image[..., :-1]).abs().mean(dim=(0, 1, 2))  # (W - 1,), dx[j]: step into column j+1
    dy = (image[..., 1:, :] - image[..., :-1, :]).abs().mean(dim=(0, 1, 3))
    ratios = [float(dx[c - 1] / dx.mean().clamp_min(1e-12)) for c in cols]
    ratios += [float(dy[r - 1] / dy.mean().clamp_min(1e-12)) for r in rows]
    return sum(ratios) / len(ratios) - 1.0 if ratios else 0.0


def gaussian_weight(tile_h: int, tile_w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(tile_h, tile_w) separable Gaussian centred on the tile, sigma a quarter of each side."""
    def axis(n: int) -> torch.Tensor:
        x = torch.arange(n, device=device, dtype=torch.float64) - (n - 1) / 2
        return torch.exp(-0.5 * (x / (n / 4)) ** 2)

    return torch.outer(axis(tile_h), axis(tile_w)).to(dtype)


class SyncGroupNorm:
    """Context in which every `nn.GroupNorm` of `network` can normalise tiles with statistics
    gathered over whole images (see the module docstring). Outside `collect`/`apply` use it
    behaves as plain GroupNorm."""

    def __init__(self, network: nn.Module) -> None:
        self.norms = [m for m in network.modules() if isinstance(m, nn.GroupNorm)]
        self.stats: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._sums: dict[tuple[int, int], torch.Tensor] = {}
        self._calls: dict[int, int] = {}
        self.mass: torch.Tensor | None = None  # (n, 1, h, w): each tile pixel's share of the blend
        self.owner: torch.Tensor | None = None  # (n,): which image each tile comes from
        self.images = 0
        self.collecting = False

    def __enter__(self) -> SyncGroupNorm:
        for i, m in enumerate(self.norms):
            m.forward = lambda x, _i=i, _m=m: self._forward(_i, _m, x)
        return self

    def __exit__(self, *exc) -> None:
        for m in self.norms:
            del m.forward

    def tiles(self, mass: torch.Tensor, owner: torch.Tensor) -> None:
        """Declare the tiles of the next network call."""
        self.mass, self.owner, self._calls = mass, owner, {}

    def finish_pass(self) -> float:
        """Turn the sums of a collecting pass into the statistics the next pass uses; returns how far
        they moved from the previous pass's (|mean shift| / std + |variance ratio - 1|, the largest
        over images and groups, averaged over layers; inf after the first pass)."""
        first, moves = not self.stats, []
        for key, s in self._sums.items():
            mean = s[..., 1] / s[..., 0]
            var = (s[..., 2] / s[..., 0] - mean**2).clamp_min(0)
            if key in self.stats:
                old_mean, old_var = self.stats[key]
                moved = (mean - old_mean).abs() / (old_var + 1e-12).sqrt() + (var / (old_var + 1e-12) - 1).abs()
                moves.append(float(moved.max()))
            self.stats[key] = (mean, var)
        self._sums = {}
        return float("inf") if first else sum(moves) / max(len(moves), 1)

    def _mass_like(self, x: torch.Tensor) -> torch.Tensor:
        """The tiles' blend shares at the resolution of feature map x: (n, C, h, w), or (n, C, h*w)
        as attention blocks flatten it (the tile's aspect ratio then gives h and w)."""
        th, tw = self.mass.shape[-2:]
        if x.dim() == 4:
            size = x.shape[-2:]
        elif x.dim() == 3:
            ratio = math.sqrt(th * tw / x.shape[-1])
            size = (round(th / ratio), round(tw / ratio))
            if size[0] * size[1] != x.shape[-1]:
                raise ValueError(f"cannot place a flattened feature map of {x.shape[-1]} pixels on {th}x{tw} "
                                 "tiles")
        else:
            raise ValueError(f"GroupNorm input of {x.dim()} dimensions cannot be tiled")
        mass = F.interpolate(self.mass, size=size, mode="area") if tuple(size) != (th, tw) else self.mass
        return mass.flatten(2) if x.dim() == 3 else mass

    def _forward(self, index: int, norm: nn.GroupNorm, x: torch.Tensor) -> torch.Tensor:
        call = self._calls.get(index, 0)
        self._calls[index] = call + 1
        key = (index, call)
        if self.mass is None or (key not in self.stats and not self.collecting):
            return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
        n, c = x.shape[:2]
        g = norm.num_groups
        flat = x.float().reshape(n, c, -1)
        if self.collecting:  # blend-weighted sums per channel, without full-size temporaries but one
            mass = self._mass_like(x).to(flat.dtype).reshape(n, -1, 1)  # (n, L, 1)
            s1 = torch.bmm(flat, mass).squeeze(-1).view(n, g, -1).sum(-1)
            s2 = torch.linalg.vector_norm(flat * mass.transpose(1, 2).sqrt(), dim=-1).square().view(n, g, -1).sum(-1)
            s0 = mass.sum((1, 2)).view(n, 1).expand(n, g) * (c // g)
            sums = torch.stack([s0, s1, s2], -1).double()
            acc = self._sums.get(key)
            if acc is None:
                acc = self._sums[key] = sums.new_zeros(self.images, g, 3)
            acc.index_add_(0, self.owner, sums)
        if key in self.stats:
            mean, var = (s[self.owner].to(flat.dtype) for s in self.stats[key])
        else:  # first collecting pass: the tile's own statistics
            mean, var = group_stats(flat, g)
        return normalize(flat.reshape(x.shape), mean, var, norm, dtype=x.dtype)  # flat is x in fp32 already


DIVERGED = 0.3  # statistics still moving this much (relative, see finish_pass) between passes are not used


def tile_weight(gauss: torch.Tensor, ramp: int, top: bool, bottom: bool, left: bool, right: bool) -> torch.Tensor:
    """The blend weight of one tile: the Gaussian, faded to zero over `ramp` pixels on each side
    that borders another tile (top/bottom/left/right: that side is inside the image), so the
    tile's own border pixels, where its convolutions saw padding, carry no weight and leave no step."""
    h, w = gauss.shape
    fade = torch.sin(0.5 * torch.pi * (torch.arange(ramp, device=gauss.device, dtype=torch.float64) + 0.5) / ramp) ** 2
    fade = fade.to(gauss.dtype)
    wy, wx = gauss.new_ones(h), gauss.new_ones(w)
    if ramp:
        if top:
            wy[:ramp] *= fade
        if bottom:
            wy[-ramp:] *= fade.flip(0)
        if left:
            wx[:ramp] *= fade
        if right:
            wx[-ramp:] *= fade.flip(0)
    return gauss * torch.outer(wy, wx)


def tiled_apply(fn: Callable[[torch.Tensor], torch.Tensor], z: torch.Tensor, tile: int = 96, overlap: int = 32,
                batch: int = 4, factor: float = 1, network: nn.Module | None = None, norm_passes: int = 0,
                align: int = 1) -> torch.Tensor:
    """`fn` on overlapping tiles of z (B, C, H, W), blended with Gaussian weights.

    fn maps a (n, C, t, t) tile to (n, C', t * factor, t * factor) (factor 1: shape-preserving);
    `fn(z)` itself runs when z fits one tile. With `network` (the module fn runs) and
    `norm_passes` >= 1, its GroupNorms use whole-image statistics from that many gathering passes.
    `align`: tile starts are multiples of it (e.g. the VAE's downsampling factor).
    """
    b, _, h, w = z.shape
    if h <= tile and w <= tile:
        return fn(z)
    factor = Fraction(factor).limit_denominator(64)
    th, tw = min(tile, h), min(tile, w)
    ys, xs = tile_grid(h, w, tile, overlap, align)
    boxes = [(y, x) for y in ys for x in xs]
    if any((v * factor).denominator != 1 for v in (th, tw, h, w, *ys, *xs)):
        raise ValueError(f"tiles of {th}x{tw} at the starts {ys} x {xs} do not map onto whole pixels at factor "
                         f"{factor}")
    oth, otw = int(th * factor), int(tw * factor)
    gauss = gaussian_weight(oth, otw, z.device, torch.float32)
    ramp = int(min(overlap, th - 1, tw - 1) * factor) // 2
    out_h, out_w = int(h * factor), int(w * factor)
    weights = {(y, x): tile_weight(gauss, ramp, y > 0, y + th < h, x > 0, x + tw < w) for y, x in boxes}
    norm = torch.zeros(1, 1, out_h, out_w, device=z.device, dtype=torch.float32)

    def window(y: int, x: int) -> tuple[slice, slice]:  # where the tile at (y, x) lands in the output
        return slice(int(y * factor), int(y * factor) + oth), slice(int(x * factor), int(x * factor) + otw)

    for (y, x), wt in weights.items():
        norm[(..., *window(y, x))] += wt

    def run(chunk, sync):
        tiles = torch.cat([z[..., y : y + th, x : x + tw] for y, x in chunk])
        if sync is not None:  # the share of each input pixel of each tile in the blend
            share = torch.stack([weights[y, x] / norm[(0, 0, *window(y, x))] for y, x in chunk])[:, None]
            share = F.interpolate(share, size=(th, tw), mode="area") if factor != 1 else share
            sync.tiles(share.repeat_interleave(b, 0), torch.arange(b, device=z.device).repeat(len(chunk)))
        return fn(tiles)

    def blend(sync):
        out = None
        for i in range(0, len(boxes), batch):
            chunk = boxes[i : i + batch]
            result = run(chunk, sync).float()
            if out is None:
                out = torch.zeros(b, result.shape[1], *norm.shape[-2:], device=z.device, dtype=torch.float32)
            for k, (y, x) in enumerate(chunk):
                out[(..., *window(y, x))] += result[k * b : (k + 1) * b] * weights[y, x]
        return (out / norm).to(z.dtype)

    if network is None or norm_passes < 1:
        return blend(None)
    with SyncGroupNorm(network) as sync:
        sync.images = b
        changes = []
        for _ in range(norm_passes):
            sync.collecting = True
            for i in range(0, len(boxes), batch):
                run(boxes[i : i + batch], sync)
            changes.append(sync.finish_pass())
            if len(changes) >= 2 and changes[-1] > DIVERGED:
                break  # diverging: stop here
        sync.collecting = False
        if len(changes) >= 2 and changes[-1] > DIVERGED:
            warnings.warn(f"whole-image GroupNorm statistics did not converge over {len(changes)} passes (changes "
                          f"{', '.join(f'{c:.3g}' for c in changes[1:])}): tiles normalise themselves instead",
                          stacklevel=2)
            return blend(None)
        return blend(sync)
