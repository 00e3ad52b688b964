"""ModelCheckpoint that also writes `last.ckpt` when training stops between saving points.

Lightning's ModelCheckpoint saves on its schedule (every N steps, at validation or epoch end);
a run that reaches `max_steps` in the middle of an epoch, with no validation after the last
scheduled save, would otherwise leave `last.ckpt` behind the final weights.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` + a final `last.ckpt` at the end of `fit` (when `save_last` is set)."""

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step != self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
