"""GroupNorm whose statistics can be computed with a split reduction, for batch-1 GPU inference.

PyTorch's CUDA GroupNorm reduces each (sample, group) row in one thread block: at batch 1 with
SD's 32 groups that is 32 blocks on a GPU of 132 multiprocessors, over rows of up to a million
elements (the VAE's 128 x 512 x 512 maps / 32). On an H200 this statistics kernel took 40% of a
512x512 call (benchmarks/RESULTS.md, "Where the 512x512 time goes"). `torch.var_mean` spreads one
row over many blocks, and the affine map becomes one multiply-add per element. The result is the
same function (fp32 statistics, as the native kernel computes them).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def group_stats(x: torch.Tensor, groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance of each (sample, group) of x (N, C, ...), in fp32: two (N, G) tensors."""
    var, mean = torch.var_mean(x.reshape(x.shape[0], groups, -1).float(), dim=-1, unbiased=False)
    return mean, var


def normalize(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor, norm: nn.GroupNorm,
              dtype: torch.dtype | None = None) -> torch.Tensor:
    """`norm` applied to x with the given per-(sample, group) statistics, as y = x * a + b per
    channel (one multiply-add per element). Computed in fp32; returned in `dtype` (default x's),
    or in fp32 under autocast (as autocast runs GroupNorm)."""
    n, c = x.shape[:2]
    per_group = c // norm.num_groups
    a = torch.rsqrt(var.float() + norm.eps).repeat_interleave(per_group, dim=1)  # (n, c)
    b = -mean.float().repeat_interleave(per_group, dim=1) * a
    if norm.affine:
        a, b = a * norm.weight.float(), b * norm.weight.float() + norm.bias.float()
    y = torch.addcmul(b[..., None], x.reshape(n, c, -1).float(), a[..., None]).view(x.shape)
    return y if torch.is_autocast_enabled(x.device.type) else y.to(dtype or x.dtype)


class SplitGroupNorm(nn.GroupNorm):
    """`nn.GroupNorm` (same parameters and state-dict keys) that, while `split` is set, computes its
    statistics with `group_stats` and applies them with `normalize`."""

    split = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.split:
            return super().forward(x)
        return normalize(x, *group_stats(x, self.num_groups), self)


def use_split_group_norm(network: nn.Module) -> list[SplitGroupNorm]:
    """Replace every plain `nn.GroupNorm` of `network` by a `SplitGroupNorm` sharing its parameters
    (off until its `split` is set); returns all of them."""
    for parent in list(network.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.GroupNorm:
                new = SplitGroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
                if child.affine:
                    new.weight, new.bias = child.weight, child.bias
                new.train(child.training)
                setattr(parent, name, new)
    return [m for m in network.modules() if isinstance(m, SplitGroupNorm)]
