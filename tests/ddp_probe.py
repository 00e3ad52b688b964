"""A callback for the DDP test: each rank records a checksum of its first training LQ batches."""

from __future__ import annotations

from pathlib import Path

import lightning as L


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
