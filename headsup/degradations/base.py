"""The degradation contract: sampling parameters is separate from applying them.

`sample(batch_size, generator, device)` draws per-sample parameters as a dict of
tensors; `forward(hq, params)` applies them to an HQ batch in [0, 1] and returns the
LQ batch. Fixed parameters reproduce the exact LQ; a seeded generator reproduces
the parameters. Validation sets draw each image's parameters from a generator
seeded with its index, so their LQ is identical run to run.
"""

from __future__ import annotations

import torch
from torch import nn


class Degradation(nn.Module):
    """Base class of batched HQ -> LQ degradations.

    Args:
        scale: Integer downscaling factor between HQ and LQ.
    """

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        if scale < 1:
            raise ValueError(f"scale must be >= 1, got {scale}")
        self.scale = scale

    def sample(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, hq: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def sample_indexed(
        self, seeds: torch.Tensor | list[int], device: torch.device | str | None = None
    ) -> dict[str, torch.Tensor]:
        """Parameters for each sample drawn from its own seed (deterministic eval sets)."""
        parts = []
        for seed in [int(s) for s in seeds]:
            gen = torch.Generator(device="cpu").manual_seed(seed)
            parts.append(self.sample(1, generator=gen, device="cpu"))
        return {k: torch.cat([p[k] for p in parts]).to(device) for k in parts[0]}

    def degrade(
        self, hq: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Sample parameters and apply them in one call."""
        return self(hq, self.sample(hq.shape[0], generator=generator, device=hq.device))


def uniform(
    low: float, high: float, n: int, generator: torch.Generator | None, device
) -> torch.Tensor:
    """n samples from U[low, high], drawn on the generator's device then moved."""
    gen_device = generator.device if generator is not None else "cpu"
    return (torch.rand(n, generator=generator, device=gen_device) * (high - low) + low).to(device)


def bernoulli(p: float, n: int, generator: torch.Generator | None, device) -> torch.Tensor:
    """n booleans, each True with probability p."""
    return uniform(0.0, 1.0, n, generator, device) < p


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clamp to [0, 1] and round to 8-bit levels, like saving an image."""
    return (x.clamp(0, 1) * 255.0).round() / 255.0
