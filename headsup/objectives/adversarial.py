"""Adversarial losses on whole images or on face crops, with the discriminator's own step.

Generator: hinge (-D(G)) or non-saturating (softplus(-D(G))) loss, averaged over the
discriminator's feature levels. Discriminator (auxiliary loss, on detached SR): hinge
relu(1 - D(x)) + relu(1 + D(G)) or softplus(-D(x)) + softplus(D(G)); optional R1 penalty
r1/2 E|grad_x D(x)|^2 on real images. Real images are the unsharpened HQ (`hq_orig`) when the
data sharpens targets. The discriminator's heads are frozen during the generator loss, so
they receive no generator gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from headsup.models.discriminator import Discriminator
from headsup.objectives.base import Objective, StepContext
from headsup.objectives.face import face_crops


class Adversarial(Objective):
    """GAN term on whole images (`region="image"`) or on face crops (`region="face"`).

    Args:
        discriminator: Frozen backbone with trainable heads.
        region: "image" or "face".
        loss: "hinge" or "nonsaturating".
        r1_weight: Weight of the R1 penalty on real inputs (0: off).
        lr: Learning rate of the heads (AdamW, betas 0.5/0.999).
        face_size: Side of face crops (face region).
        face_expand: Face crop side as a multiple of the box's longer side.
        weight: Multiplier of the generator term.
        start_step: Generator update from which the term and the discriminator training start.
    """

    def __init__(
        self,
        discriminator: Discriminator,
        region: Literal["image", "face"] = "image",
        loss: Literal["hinge", "nonsaturating"] = "hinge",
        r1_weight: float = 0.0,
        lr: float = 1e-4,
        face_size: int = 224,
        face_expand: float = 1.2,
        weight: float = 0.1,
        start_step: int = 0,
    ) -> None:
        super().__init__(weight, start_step)
        if region not in ("image", "face") or loss not in ("hinge", "nonsaturating"):
            raise ValueError(f"region must be image|face and loss hinge|nonsaturating, got {region}, {loss}")
        self.discriminator = discriminator
        self.region, self.loss, self.r1_weight, self.lr = region, loss, r1_weight, lr
        self.face_size, self.face_expand = face_size, face_expand

    def _inputs(self, ctx: StepContext, images: torch.Tensor) -> torch.Tensor | None:
        if self.region == "image":
            return images
        batch = ctx.batch
        if "face_boxes" not in batch or not bool(batch["face_valid"].any()):
            return None
        return face_crops(images.float(), batch["face_boxes"], batch["face_valid"], self.face_size, self.face_expand)

    def _heads_zero(self) -> torch.Tensor:
        return sum(p.sum() for p in self.discriminator.head_parameters()) * 0.0

    def generator_loss(self, ctx: StepContext) -> torch.Tensor:
        fake = self._inputs(ctx, ctx.sr)
        if fake is None:
            return ctx.sr.sum() * 0.0
        heads = self.discriminator.head_parameters()
        for p in heads:
            p.requires_grad_(False)
        try:
            logits = self.discriminator(fake)
        finally:
            for p in heads:
                p.requires_grad_(True)
        if self.loss == "hinge":
            return torch.stack([-lg.mean() for lg in logits]).mean()
        return torch.stack([F.softplus(-lg).mean() for lg in logits]).mean()

    def aux_loss(self, ctx: StepContext) -> torch.Tensor:
        real_images = ctx.batch.get("hq_orig", ctx.hq)
        real = self._inputs(ctx, real_images.float())
        fake = self._inputs(ctx, ctx.sr.detach().float())
        if real is None or fake is None:
            return self._heads_zero()
        real = real.detach().requires_grad_(self.r1_weight > 0)
        real_logits = self.discriminator(real)
        fake_logits = self.discriminator(fake)
        if self.loss == "hinge":
            terms = [F.relu(1 - r).mean() + F.relu(1 + f).mean() for r, f in zip(real_logits, fake_logits)]
        else:
            terms = [F.softplus(-r).mean() + F.softplus(f).mean() for r, f in zip(real_logits, fake_logits)]
        total = torch.stack(terms).mean()
        if self.r1_weight > 0:
            (grad,) = torch.autograd.grad(sum(lg.sum() for lg in real_logits), real, create_graph=True)
            total = total + self.r1_weight / 2 * grad.pow(2).flatten(1).sum(1).mean()
        return total

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.discriminator.head_parameters(), lr=self.lr, betas=(0.5, 0.999))
