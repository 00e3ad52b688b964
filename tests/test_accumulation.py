"""Gradient accumulation (`model.accumulate`): k batches of n make the same update as one batch of k n."""

from __future__ import annotations

import lightning as L
import torch
from skimage.data import astronaut
from torch.utils.data import DataLoader

from headsup.models.generator import OneStepSR
from headsup.objectives.reconstruction import PixelMSE
from headsup.system import SRSystem
from headsup.testing.tiny import TinySD


def _samples(n: int = 4) -> list[dict]:
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    hq = [img[:, y:y + 32, x:x + 32] for y, x in ((40, 180), (100, 200), (300, 60), (400, 300))][:n]
    return [{"hq": h, "lq": torch.nn.functional.avg_pool2d(h[None], 4)[0]} for h in hq]


def _updated_weights(batch_size: int, accumulate: int, steps: int = 1) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    system = SRSystem(OneStepSR(TinySD()), {"mse": PixelMSE()}, grad_clip=None, accumulate=accumulate,
                      optimizer=lambda params: torch.optim.SGD(params, lr=10.0))  # the update is the gradient
    trainer = L.Trainer(max_steps=steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", num_sanity_val_steps=0)
    trainer.fit(system, train_dataloaders=DataLoader(_samples() * steps, batch_size=batch_size))
    assert int(system.generator_updates) == steps == trainer.global_step  # updates, not batches
    return {n: p.detach().clone() for n, p in system.generator.named_parameters() if p.requires_grad}


def test_four_batches_of_one_make_the_update_of_one_batch_of_four():
    torch.manual_seed(0)
    before = {n: p.detach().clone() for n, p in OneStepSR(TinySD()).named_parameters() if p.requires_grad}
    whole, accumulated = _updated_weights(4, 1), _updated_weights(1, 4)
    moved = set()
    for name in whole:  # equal up to float summation order (1.3e-5 of the update, 2026-12-05)
        update = (whole[name] - before[name]).abs().max()  # 0 for LoRA A on the first step (B starts at 0); B only where the gradient reaches it
        assert (accumulated[name] - whole[name]).abs().max() <= 1e-3 * update, name
        if update > 0:
            moved.add(name)
    assert {n for n in whole if "conv_in.base_layer" in n} <= moved and len(moved) > 50  # a real update
