"""Gradient accumulation (`model.accumulate`): k batches of n make the same updates as batches of k n,
for the generator and for an objective's own helper; the EMA averages once per update."""

from __future__ import annotations

import lightning as L
import torch
from skimage.data import astronaut
from torch import nn
from torch.utils.data import DataLoader

from headsup.callbacks.ema import TrainableEMA
from headsup.models.generator import OneStepSR
from headsup.objectives.base import Objective
from headsup.objectives.reconstruction import PixelMSE
from headsup.system import SRSystem
from headsup.testing.tiny import TinySD

STEPS = 2


class _Helper(Objective):
    """An objective with its own trained parameter (as the fake score or a discriminator)."""

    def __init__(self) -> None:
        super().__init__(weight=0.0)  # no generator term; only its helper trains
        self.w = nn.Parameter(torch.zeros(3))

    def active(self, step: int) -> bool:
        return True

    def generator_loss(self, ctx):
        return ctx.sr.sum() * 0

    def aux_loss(self, ctx):
        return ((self.w - ctx.sr.mean((2, 3))) ** 2).sum(1).mean()

    def configure_optimizer(self):
        return torch.optim.SGD([self.w], lr=0.5)


def _samples() -> list[dict]:
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    hq = [img[:, y:y + 32, x:x + 32] for y, x in ((40, 180), (100, 200), (300, 60), (400, 300))]
    return [{"hq": h, "lq": torch.nn.functional.avg_pool2d(h[None], 4)[0]} for h in hq] * STEPS


def _train(batch_size: int, accumulate: int):
    torch.manual_seed(0)
    system = SRSystem(OneStepSR(TinySD()), {"mse": PixelMSE(), "helper": _Helper()}, grad_clip=None,
                      accumulate=accumulate, optimizer=lambda params: torch.optim.SGD(params, lr=10.0),
                      lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    ema = TrainableEMA(decay=0.5)
    trainer = L.Trainer(max_steps=STEPS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0, callbacks=[ema])
    trainer.fit(system, train_dataloaders=DataLoader(_samples(), batch_size=batch_size))
    assert int(system.generator_updates) == STEPS == trainer.global_step  # updates, not batches
    assert ema.updates == STEPS  # one average per update
    weights = {n: p.detach().clone() for n, p in system.generator.named_parameters() if p.requires_grad}
    return weights, system.objectives["helper"].w.detach().clone(), dict(ema.shadow)


def test_four_batches_of_one_make_the_updates_of_batches_of_four():
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in OneStepSR(TinySD()).named_parameters() if p.requires_grad}
    (whole, helper, shadow), (accumulated, helper_acc, shadow_acc) = _train(4, 1), _train(1, 4)
    moved = set()
    for name in whole:  # equal up to float summation order (1.3e-5 of the update, 2026-12-05)
        update = (whole[name] - before[name]).abs().max()
        assert (accumulated[name] - whole[name]).abs().max() <= 1e-3 * update + 1e-6, name
        assert torch.allclose(shadow_acc[name], shadow[name], atol=1e-3 * float(update) + 1e-6), name
        if update > 0:
            moved.add(name)
    assert {n for n in whole if "conv_in.base_layer" in n} <= moved and len(moved) > 50  # a real update
    assert helper.abs().max() > 0.05 and torch.allclose(helper_acc, helper, rtol=1e-4, atol=1e-6)


class _NaNOnce(Objective):
    """A generator term that is NaN on its first call only (micro-batch 0 of update 0)."""

    def __init__(self) -> None:
        super().__init__(weight=1.0)
        self.calls = 0

    def generator_loss(self, ctx):
        self.calls += 1
        return ctx.sr.mean() * (float("nan") if self.calls == 1 else 0.0)


def test_a_non_finite_micro_batch_skips_its_whole_update():
    torch.manual_seed(0)
    system = SRSystem(OneStepSR(TinySD()), {"mse": PixelMSE(), "nan": _NaNOnce()}, accumulate=2)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(system, train_dataloaders=DataLoader(_samples(), batch_size=1))  # 8 batches: 4 updates
    assert system.skipped_steps == 1 and int(system.generator_updates) == 3 == trainer.global_step
    assert all(torch.isfinite(p).all() for p in system.generator.parameters())
