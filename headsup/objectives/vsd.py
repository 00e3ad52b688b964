"""Variational score distillation (VSD) of the generator's latents against a frozen teacher.

OSEDiff regularises the one-step generator with VSD in latent space (Wang et al. 2023,
ProlificDreamer; the DMD form of Yin et al. 2024). For the generator's clean latent z0,
t ~ U[t_min, t_max), z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps:

    g = (x0_fake(z_t) - x0_real(z_t)) / mean|z0 - x0_real(z_t)|        (per sample)
    L_G = || z0 - sg(z0 - g) ||^2 / N                                  (so dL/dz0 = 2 g / N)

as OSEDiff's `F.mse_loss(z0, (z0 - g).detach())`.

x0_real comes from the frozen teacher with classifier-free guidance (positive branch: the
image's prompt where the batch has per-image prompts), x0_fake from the LoRA fake score (the same
prompt), which is trained on the generator's detached latents with the usual diffusion
loss (t ~ U[0, 1000), epsilon or v target): the auxiliary loss of this objective.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headsup.models.teacher import TeacherWithFakeScore, to_x0
from headsup.objectives.base import Objective, StepContext


class VSDLoss(Objective):
    """VSD generator loss plus the fake score's diffusion loss (own optimizer).

    Args:
        scores: The frozen teacher and the LoRA fake score (one shared UNet; built from the
            generator's backbone unless given its own).
        weight: Multiplier of the generator term (OSEDiff: 1.0).
        start_step: Generator update from which the term (and fake-score training) is active.
        t_min: Smallest timestep of the generator term.
        t_max: End (exclusive) of the generator term's timestep range.
        lr: Learning rate of the fake score's LoRA (AdamW; OSEDiff: 5e-5).
        weight_decay: AdamW weight decay of the fake score (OSEDiff: 1e-2).
        grad_clip: Max gradient norm of the fake score's update (OSEDiff: 1.0; None: no clipping).
    """

    def __init__(
        self,
        scores: TeacherWithFakeScore,
        weight: float = 1.0,
        start_step: int = 0,
        t_min: int = 20,
        t_max: int = 980,
        lr: float = 5e-5,
        weight_decay: float = 1e-2,
        grad_clip: float | None = 1.0,
    ) -> None:
        super().__init__(weight, start_step)
        self.scores = scores
        self.t_min, self.t_max = t_min, t_max
        self.lr, self.weight_decay = lr, weight_decay
        self.aux_grad_clip = grad_clip
        if scores.built:
            self._check_range()

    def _check_range(self) -> None:
        steps = len(self.scores.alphas_cumprod)
        if not 0 <= self.t_min < self.t_max <= steps:
            raise ValueError(f"VSD needs 0 <= t_min < t_max <= {steps}, got {self.t_min}, {self.t_max}")

    def bind(self, generator) -> None:
        if not self.scores.built:
            self.scores.build(generator.backbone_source)
            self._check_range()

    def _noisy(self, z0: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        gen = self.rng(z0.device)
        t = torch.randint(lo, hi, (z0.shape[0],), device=z0.device, generator=gen)
        noise = torch.randn(z0.shape, device=z0.device, dtype=z0.dtype, generator=gen)
        a = self.scores.alphas_cumprod[t].view(-1, 1, 1, 1).to(z0.dtype)
        return a.sqrt() * z0 + (1 - a).sqrt() * noise, t, noise

    def generator_loss(self, ctx: StepContext) -> torch.Tensor:
        z0 = ctx.latent.float()
        with torch.no_grad():
            z_t, t, _ = self._noisy(z0, self.t_min, self.t_max)
            z_t = z_t.to(ctx.latent.dtype)
            a = self.scores.alphas_cumprod[t]
            positive = self.scores.positive_embeds(ctx.batch.get("prompt"))
            x0_real = to_x0(self.scores.real_eps(z_t, t, positive).float(), z_t.float(), a)
            x0_fake = to_x0(self.scores.fake_eps(z_t, t, positive).float(), z_t.float(), a)
            weight = (z0 - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-8)
            grad = torch.nan_to_num((x0_fake - x0_real) / weight)
        return F.mse_loss(z0, (z0 - grad).detach())

    def aux_loss(self, ctx: StepContext) -> torch.Tensor:
        z0 = ctx.latent.detach().float()
        z_t, t, noise = self._noisy(z0, 0, len(self.scores.alphas_cumprod))
        positive = self.scores.positive_embeds(ctx.batch.get("prompt"))
        pred = self.scores.fake_output(z_t.to(ctx.latent.dtype), t, positive).float()
        if self.scores.prediction_type == "v_prediction":
            a = self.scores.alphas_cumprod[t].view(-1, 1, 1, 1)
            target = a.sqrt() * noise - (1 - a).sqrt() * z0
        elif self.scores.prediction_type == "sample":
            target = z0
        else:
            target = noise
        return F.mse_loss(pred, target)

    def configure_optimizer(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.scores.fake_parameters(), lr=self.lr, weight_decay=self.weight_decay)
