"""What a `headsup fit` checkpoint holds of the generator, read without building anything.

A checkpoint (Lightning's dict) holds the trained tensors only (`state_dict`, "generator.<name>"), the
run's EMA average under the callback state `EMA_KEY`, the model config (`hyper_parameters`), and the
backbone architecture and face settings `SRSystem` records (`backbone`, `faces`).
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch

EMA_KEY = "TrainableEMA"  # where `headsup.callbacks.ema.TrainableEMA` keeps its average in a checkpoint


def run_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The last checkpoint of a `headsup fit` run folder (checkpoints/last.ckpt), or None without one."""
    last = Path(folder) / "checkpoints" / "last.ckpt"
    return last if last.is_file() else None


def read_checkpoint(path: str | os.PathLike) -> dict:
    """A `headsup fit` checkpoint's dict, loaded tensors-only (`weights_only`): a file that would need to
    run code while unpickling is refused, naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds more than tensors and plain values (loading it could run code), "
                         f"refused: {str(err).splitlines()[0]}") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise ValueError(f"{path} is not a readable checkpoint: {err}") from err


def ema_weights(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The run's EMA average of the generator's trained tensors (`TrainableEMA`, keys without "generator."),
    empty where the run had none or averaged no update yet."""
    ema = (checkpoint.get("callbacks") or {}).get(EMA_KEY) or {}
    return dict(ema["shadow"]) if ema.get("shadow") and int(ema.get("updates", 0)) > 0 else {}


def checkpoint_weights(checkpoint: dict, raw: bool = False) -> dict[str, torch.Tensor]:
    """The generator's trained tensors in a checkpoint (keys without "generator."): the run's EMA average
    where it has one and not `raw`, else the live weights."""
    state = {k.removeprefix("generator."): v for k, v in checkpoint.get("state_dict", {}).items()
             if k.startswith("generator.")}
    if not raw:
        state.update({k: v for k, v in ema_weights(checkpoint).items() if k in state})
    return state
