"""Pixel and perceptual reconstruction losses between SR and HQ.

MSE is OSEDiff's L2 data term; LPIPS (Zhang et al. 2018) its perceptual term
(weight 2 in OSEDiff).
"""

from __future__ import annotations

import torch.nn.functional as F

from headsup.models.lpips import LPIPS
from headsup.objectives.base import Objective, StepContext


class PixelMSE(Objective):
    """Mean squared error in [0, 1] pixel space.

    Args:
        weight: Multiplier of the term.
        start_step: Generator update from which it is active.
    """

    def generator_loss(self, ctx: StepContext):
        return F.mse_loss(ctx.sr.float(), ctx.hq.float())


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
