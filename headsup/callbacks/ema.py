"""Exponential moving average of the generator's trainable weights (LoRA, conv_in).

Only the trainable tensors are averaged (Lightning's `EMAWeightAveraging` copies the whole
module, frozen SD UNet, VAE and teacher included, which costs gigabytes for nothing here).
Validation, test and prediction run with the averaged weights once at least one generator
update has been averaged in, then the live weights are put back. The average is saved with
the callback's state in every checkpoint (under `STATE_KEY`); `test`/`predict` with
`--ckpt_path` read it from there when this callback is configured, and `averaged_weights`
gives it to every other loader of a checkpoint (`SRSystem` outside `fit`, `headsup-tools
enhance` and `SRPipeline` through `headsup.models.checkpoint.checkpoint_weights`), so that one checkpoint
gives one image.
(Lightning runs checkpoint callbacks last, so the live weights are back in place before a
checkpoint is written after validation.)
"""

from __future__ import annotations

import lightning as L
import torch

from headsup.models.checkpoint import EMA_KEY as STATE_KEY  # one name for the writer and the readers
from headsup.models.checkpoint import ema_weights


def averaged_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The averaged generator weights a checkpoint holds, keyed like `SRSystem`'s state dict
    ("generator.<name>"); empty when the run had no `TrainableEMA` or averaged no update yet.

    Args:
        checkpoint: A loaded `headsup fit` checkpoint (the dict of its `.ckpt` file).
    """
    return {f"generator.{name}": tensor for name, tensor in ema_weights(checkpoint).items()}


class TrainableEMA(L.Callback):
    """EMA of the generator's trainable parameters, swapped in for evaluation.

    Args:
        decay: Weight of the old average per generator update.
        start_step: Generator update from which weights are averaged (before: the average
            follows the live weights).
    """

    def __init__(self, decay: float = 0.999, start_step: int = 0) -> None:
        if not 0 <= decay <= 1:
            raise ValueError(f"EMA decay must be within [0, 1], got {decay}")
        self.decay = decay
        self.start_step = start_step
        self.shadow: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self._live: dict[str, torch.Tensor] | None = None

    @staticmethod
    def _params(pl_module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.generator.named_parameters() if p.requires_grad}

    @property
    def state_key(self) -> str:
        return STATE_KEY

    def on_fit_start(self, trainer, pl_module) -> None:
        if self.shadow is None:
            self.shadow = {n: p.detach().clone() for n, p in self._params(pl_module).items()}
        self.shadow = {n: t.to(pl_module.device) for n, t in self.shadow.items()}
        self._last_update = int(pl_module.generator_updates)

    @torch.no_grad()
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(pl_module.generator_updates)
        if step == getattr(self, "_last_update", None):
            return  # no generator update in this batch (accumulating, or a skipped non-finite update)
        self._last_update = step
        decay = self.decay if step > self.start_step else 0.0
        for name, param in self._params(pl_module).items():
            self.shadow[name].lerp_(param.detach(), 1 - decay)
        self.updates += 1

    # ------------------------------------------------------------------ evaluation with the average
    def _swap_in(self, trainer, pl_module) -> None:
        if self.shadow is None and trainer.ckpt_path:
            state = torch.load(trainer.ckpt_path, map_location="cpu", weights_only=True)
            self.load_state_dict(state.get("callbacks", {}).get(self.state_key, {}))
        if not self.shadow or self.updates == 0 or self._live is not None:
            return
        params = self._params(pl_module)
        self._live = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(self.shadow[name])

    def _swap_out(self, trainer, pl_module) -> None:
        if self._live is None:
            return
        with torch.no_grad():
            for name, param in self._params(pl_module).items():
                param.copy_(self._live[name])
        self._live = None

    def on_validation_start(self, trainer, pl_module) -> None:
        self._swap_in(trainer, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        self._swap_out(trainer, pl_module)

    def on_test_start(self, trainer, pl_module) -> None:
        self._swap_in(trainer, pl_module)

    def on_test_end(self, trainer, pl_module) -> None:
        self._swap_out(trainer, pl_module)

    def on_predict_start(self, trainer, pl_module) -> None:
        self._swap_in(trainer, pl_module)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._swap_out(trainer, pl_module)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        shadow = {n: t.detach().cpu() for n, t in (self.shadow or {}).items()}
        return {"shadow": shadow, "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        if state.get("shadow"):
            self.shadow = dict(state["shadow"])
            self.updates = int(state.get("updates", 0))
