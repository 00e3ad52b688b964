"""ModelCheckpoint that also writes `last.ckpt` when training stops between saving points.

Lightning's ModelCheckpoint saves on its schedule (every N steps, at validation or epoch end);
a run that reaches `max_steps` in the middle of an epoch, with no validation after the last
scheduled save, would otherwise leave `last.ckpt` behind the final weights.

Checkpoints are written atomically: to `<name>.partial` in the same folder, then renamed over
the old file, so a job killed while saving (SIGKILL, node failure, SLURM preemption) leaves the
previous complete checkpoint, never a truncated one that `--ckpt_path last` would fail to load.
On SIGTERM (what SLURM sends before preempting or at the time limit) Lightning stops after the
current update and this callback writes `last.ckpt` first, so a requeued `--ckpt_path last`
run loses nothing.
"""

from __future__ import annotations

import os

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` + a final `last.ckpt` at the end of `fit` (when `save_last` is set), with
    atomic writes."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        partial = f"{filepath}.partial"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            os.replace(partial, filepath)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_checkpoint_saved = filepath

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException) and self.save_last and trainer.state.fn == "fit":
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step != self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
