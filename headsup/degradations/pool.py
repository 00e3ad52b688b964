"""Training-pair pool: Real-ESRGAN's queue that mixes degraded pairs across batches.

Batches synthesised on the device share their batch-level draws (resize scale and mode,
final order); a pool of `size` recent pairs, shuffled before each exchange, breaks that
correlation. While the pool fills, batches pass through unchanged; once full, each batch
is swapped for a random one taken from the pool and goes into the pool in its place.
One pool per rank (it lives in the rank's DataModule).
"""

from __future__ import annotations

import torch


class PairPool:
    """A fixed-size pool of training samples (all tensors and per-sample lists of a batch, keyed like the batch).

    Args:
        size: Number of samples kept; a multiple of the batch size.
        keys: Batch entries exchanged through the pool (others pass through unchanged); None:
            every tensor with the batch's leading size (images, faces, masks, references) and every
            list of that length (prompts), fixed at the first batch, so everything that describes a
            sample travels with it.
    """

    def __init__(self, size: int, keys: tuple[str, ...] | None = None) -> None:
        if size < 1:
            raise ValueError(f"pool size must be positive, got {size}")
        self.size = size
        self.keys = keys
        self.store: dict[str, torch.Tensor] = {}
        self.filled = 0

    def __call__(self, batch: dict, generator: torch.Generator | None = None) -> dict:
        if self.keys is None:
            b = batch["lq"].shape[0]
            self.keys = tuple(k for k, v in batch.items() if (isinstance(v, torch.Tensor) and v.ndim and v.shape[0] == b)
                              or (isinstance(v, list) and len(v) == b))  # per-sample lists: prompts
        missing = [k for k in self.keys if k not in batch]
        extra = [k for k, v in batch.items() if k not in self.keys and isinstance(v, (torch.Tensor, list))
                 and not (isinstance(v, torch.Tensor) and v.ndim == 0) and len(v) == len(batch[self.keys[0]])]
        if missing or extra:  # a sample's parts would part company in the pool
            raise ValueError(f"pair pool: this batch's per-sample entries differ from the first batch's "
                             f"(missing {missing}, new {extra})")
        b = len(batch[self.keys[0]])
        if self.size % b:
            raise ValueError(f"pool size {self.size} is not a multiple of the batch size {b}")
        if not self.store:
            self.store = {k: batch[k].new_empty((self.size, *batch[k].shape[1:])) if isinstance(batch[k], torch.Tensor)
                          else [None] * self.size for k in self.keys}
        if self.filled < self.size:
            for k in self.keys:
                self.store[k][self.filled : self.filled + b] = batch[k]
            self.filled += b
            return batch
        device = generator.device if generator is not None else "cpu"
        tensors = [v for v in self.store.values() if isinstance(v, torch.Tensor)]
        order = torch.randperm(self.size, generator=generator, device=device)
        order = order.to(tensors[0].device) if tensors else order
        out = dict(batch)
        for k in self.keys:
            listed = isinstance(self.store[k], list)
            shuffled = [self.store[k][i] for i in order.tolist()] if listed else self.store[k][order]
            out[k] = shuffled[:b] if listed else shuffled[:b].clone()
            shuffled[:b] = batch[k]
            self.store[k] = shuffled
        return out
