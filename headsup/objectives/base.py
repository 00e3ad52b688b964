"""The objective contract of the training step.

An `Objective` turns a `StepContext` (the batch and one generator pass) into a
generator loss. Objectives that own trainable helpers (a fake-score network, a
discriminator) also return an auxiliary loss on detached outputs and bring their
own optimizer. `SRSystem` weights and sums the generator losses, steps the
generator once, then steps each auxiliary objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class StepContext:
    """Everything an objective may look at in one training step.

    Attributes:
        lq: Degraded input (B, 3, h, w) in [0, 1].
        hq: Target (B, 3, H, W) in [0, 1].
        sr: Generator output (B, 3, H, W) in [0, 1], with gradient.
        latent: Generator's clean latent estimate, with gradient.
        step: Number of generator updates done so far.
        batch: The whole batch (face boxes, masks, references, ...).
    """

    lq: torch.Tensor
    hq: torch.Tensor
    sr: torch.Tensor
    latent: torch.Tensor | None = None
    step: int = 0
    batch: dict[str, Any] = field(default_factory=dict)


# Pixel ranges an MSE term can be measured in, and the factor to the MSE of images in [0, 1].
# OSEDiff takes `F.mse_loss` of images in [-1, 1], i.e. 4x the MSE of the same images in [0, 1].
MSE_RANGES = {"-1..1": 4.0, "0..1": 1.0}


def range_mse(sr: torch.Tensor, hq: torch.Tensor, value_range: str) -> torch.Tensor:
    """MSE of images given in [0, 1], measured as if they were in `value_range` ("-1..1" or "0..1")."""
    if value_range not in MSE_RANGES:
        raise ValueError(f"range must be one of {sorted(MSE_RANGES)}, got {value_range!r}")
    return MSE_RANGES[value_range] * F.mse_loss(sr, hq)


class Objective(nn.Module):
    """A weighted loss term.

    Args:
        weight: Multiplier of the term in the generator loss.
        start_step: Generator update from which the term is active.

    Attributes:
        aux_grad_clip: Max gradient norm of the helpers' update (`aux_loss`), None: no clipping.
    """

    aux_grad_clip: float | None = None

    def __init__(self, weight: float = 1.0, start_step: int = 0) -> None:
        super().__init__()
        self.weight = weight
        self.start_step = start_step
        self._seed = 0
        self._rng: torch.Generator | None = None

    def seed(self, seed: int) -> None:
        """Seed the objective's own random draws (timesteps, noise); SRSystem gives each rank its own."""
        self._seed = seed
        self._rng = None

    def rng(self, device: torch.device) -> torch.Generator:
        """The objective's generator on `device` (created on first use from the seed)."""
        if self._rng is None or self._rng.device != torch.device(device):
            self._rng = torch.Generator(device=device).manual_seed(self._seed)
        return self._rng

    def bind(self, generator: nn.Module) -> None:
        """Called once by SRSystem with the generator, before anything is trained (objectives
        that build from the generator's backbone source do it here)."""

    def active(self, step: int) -> bool:
        return self.weight != 0 and step >= self.start_step

    def generator_loss(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def aux_loss(self, ctx: StepContext) -> torch.Tensor | None:
        """Loss of the objective's own trainable helpers, or None if it has none."""
        return None

    def configure_optimizer(self) -> torch.optim.Optimizer | None:
        """Optimizer of the helpers trained by `aux_loss`, or None."""
        return None
