"""Test-only callbacks and objectives, loaded by CLI runs through `trainer.callbacks` / `model.objectives`
with the repository root on PYTHONPATH: record LQ batches, inject faults (SIGTERM, a kill while a
checkpoint is written, a NaN loss on one rank) and dump each rank's final state."""

from __future__ import annotations

import io
import os
import signal
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F

from headsup.objectives.base import Objective, StepContext


class RecordLQ(L.Callback):
    """Append `rank checksum` of each training batch's LQ to OUT/lq_rank{rank}.txt.

    Args:
        out: Folder for the records.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / f"lq_rank{trainer.global_rank}.txt", "a") as handle:
            handle.write(f"{float(batch['lq'].double().sum()):.6f}\n")


class SigtermAt(L.Callback):
    """Send SIGTERM to this process once, at the end of the batch that made generator update `update`.

    Args:
        update: Generator update (1-based count) after which the signal is sent.
    """

    def __init__(self, update: int) -> None:
        self.update = update

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if int(pl_module.generator_updates) == self.update:
            os.kill(os.getpid(), signal.SIGTERM)


class KillWhileSaving(L.Callback):
    """SIGKILL this process in the middle of writing the checkpoint `name` after generator update `update`.

    The checkpoint's bytes are cut in half and written to whatever path the checkpoint callback asked
    for (its `.partial` file, or the final name), synced to disk, and the process killed there.

    Args:
        update: Generator update whose save is interrupted.
        name: Start of the checkpoint file name to interrupt (e.g. "last").
    """

    def __init__(self, update: int, name: str = "last") -> None:
        self.update, self.name = update, name

    def setup(self, trainer, pl_module, stage: str) -> None:
        checkpoint_io = trainer.strategy.checkpoint_io
        save = checkpoint_io.save_checkpoint

        def save_or_die(checkpoint, path, storage_options=None):
            if int(pl_module.generator_updates) == self.update and os.path.basename(path).startswith(self.name):
                buffer = io.BytesIO()
                torch.save(checkpoint, buffer)
                with open(path, "wb") as handle:
                    handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    handle.flush()
                    os.fsync(handle.fileno())
                os.kill(os.getpid(), signal.SIGKILL)
            return save(checkpoint, path, storage_options)

        checkpoint_io.save_checkpoint = save_or_die


def _rank() -> int:
    return torch.distributed.get_rank() if torch.distributed.is_initialized() else 0


class NanOnRank(Objective):
    """Pixel MSE that is NaN on one rank, at one call.

    Args:
        rank: The rank whose loss turns NaN.
        call: Which call of `generator_loss` on that rank (0-based) returns NaN.
        weight: Multiplier of the term.
    """

    def __init__(self, rank: int = 1, call: int = 1, weight: float = 1.0) -> None:
        super().__init__(weight=weight)
        self.rank, self.call, self.calls = rank, call, 0

    def generator_loss(self, ctx: StepContext) -> torch.Tensor:
        call, self.calls = self.calls, self.calls + 1
        loss = F.mse_loss(ctx.sr.float(), ctx.hq.float())
        return loss * float("nan") if (_rank(), call) == (self.rank, self.call) else loss


class DumpState(L.Callback):
    """At the end of fit, save each rank's trainable weights and step counters to OUT/rank{rank}.pt.

    Args:
        out: Folder for the dumps.
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_end(self, trainer, pl_module) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        weights = {n: p.detach().cpu().clone() for n, p in pl_module.named_parameters() if p.requires_grad}
        state = {"weights": weights, "skipped_steps": pl_module.skipped_steps,
                 "generator_updates": int(pl_module.generator_updates), "global_step": trainer.global_step}
        torch.save(state, self.out / f"rank{trainer.global_rank}.pt")
