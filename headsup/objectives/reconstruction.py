"""Pixel and perceptual reconstruction losses between SR and HQ.

MSE is OSEDiff's L2 data term (on images in [-1, 1], as OSEDiff computes it); LPIPS
(Zhang et al. 2018) its perceptual term (weight 2 in OSEDiff).
"""

from __future__ import annotations

import torch

from headsup.models.lpips import LPIPS
from headsup.objectives.base import Objective, StepContext, range_mse


class PixelMSE(Objective):
    """Mean squared error of SR and HQ.

    Args:
        weight: Multiplier of the term (OSEDiff: 1).
        start_step: Generator update from which it is active.
        range: Pixel range the error is measured in: "-1..1" (OSEDiff's, the default) or "0..1"
            (a quarter of it).
    """

    def __init__(self, weight: float = 1.0, start_step: int = 0, range: str = "-1..1") -> None:  # noqa: A002
        super().__init__(weight, start_step)
        range_mse(torch.zeros(1), torch.zeros(1), range)  # refuse an unknown range when built
        self.range = range

    def generator_loss(self, ctx: StepContext):
        return range_mse(ctx.sr.float(), ctx.hq.float(), self.range)


class LPIPSLoss(Objective):
    """LPIPS distance (VGG) between SR and HQ; needs the local torchvision VGG16 file.

    Args:
        vgg_weights: torchvision VGG16 state dict (`vgg16-397923af.pth`).
        lpips_weights: LPIPS linear-layer weights; default (None): the LPIPS v0.1 `vgg.pth`
            torchmetrics ships.
        weight: Multiplier of the term.
        start_step: Generator update from which it is active.
    """

    def __init__(self, vgg_weights: str, lpips_weights: str | None = None, weight: float = 2.0,
                 start_step: int = 0) -> None:
        super().__init__(weight, start_step)
        self.lpips = LPIPS.shared(vgg_weights, lpips_weights, owner="LPIPSLoss")

    def generator_loss(self, ctx: StepContext):
        return self.lpips(ctx.sr.float(), ctx.hq.float()).mean()
