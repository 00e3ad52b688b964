"""ModelCheckpoint that also writes `last.ckpt` when training stops between saving points.

Lightning's ModelCheckpoint saves on its schedule (every N steps, at validation or epoch end);
a run that reaches `max_steps` in the middle of an epoch, with no validation after the last
scheduled save, would otherwise leave `last.ckpt` behind the final weights.

Checkpoints on a local filesystem are written atomically: to `<name>.partial` in the same folder,
synced to disk, then renamed over the old file, so a job killed while saving (SIGKILL, node failure,
SLURM preemption) leaves the previous complete checkpoint, never a truncated one that
`--ckpt_path last` would fail to load. (Lightning stages its write in the system temp folder and
moves it into place; when that folder is on another filesystem than the checkpoints, the move is a
copy, and a kill during it truncates the file.) Object stores replace a file in one upload already.

On SIGTERM (what SLURM sends before preempting or at the time limit) Lightning stops after the
current update and this callback writes `last.ckpt` first, so a requeued `--ckpt_path last`
run loses nothing. Lightning's own `save_on_exception` works as in `ModelCheckpoint`.

The hooks used below are ModelCheckpoint internals of Lightning 2.6 (`_save_checkpoint`,
`_save_last_checkpoint`, `_monitor_candidates`, `_last_global_step_saved`,
`_last_checkpoint_saved`); 2.6 offers no public way to save now or to change how a file is
written, hence the pinned Lightning range and tests/test_checkpoint_faults.py.
"""

from __future__ import annotations

import os

from fsspec.implementations.local import LocalFileSystem
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

PARTIAL_SUFFIX = ".partial"


class Checkpoint(ModelCheckpoint):
    """`ModelCheckpoint` + a final `last.ckpt` at the end of `fit` and on SIGTERM (when `save_last` is
    set), with atomic writes."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        if not isinstance(get_filesystem(filepath), LocalFileSystem):
            super()._save_checkpoint(trainer, filepath)
            return
        partial = f"{filepath}{PARTIAL_SUFFIX}"
        super()._save_checkpoint(trainer, partial)
        if trainer.is_global_zero:
            with open(partial, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(partial, filepath)
            folder = os.open(os.path.dirname(os.path.abspath(filepath)), os.O_RDONLY)
            try:
                os.fsync(folder)  # the rename itself survives a node failure
            finally:
                os.close(folder)
        trainer.strategy.barrier("atomic_checkpoint")
        self._last_checkpoint_saved = filepath

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if (
            isinstance(exception, SIGTERMException)
            and self.save_last
            and trainer.state.fn == "fit"
            and not trainer.sanity_checking
            and self._last_global_step_saved != trainer.global_step
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        if self.save_last and trainer.global_step != self._last_global_step_saved and not trainer.sanity_checking:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
