"""Checkpoint faults: SIGTERM between two saves, a kill while a checkpoint is written, Lightning's own
`save_on_exception`, and the ModelCheckpoint internals `headsup.callbacks.Checkpoint` relies on."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from headsup.callbacks import Checkpoint
from tests.conftest import ROOT, make_config


def _cli_config(tmp_path, samples_dir, tiny_sd_dir, every: int, max_steps: int, probe: dict | None = None):
    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=max_steps, val_check_interval=1000,
                         limit_val_batches=0, log_every_n_steps=1)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"][0]["init_args"]["every_n_train_steps"] = every
    cfg["trainer"]["callbacks"] += [probe] if probe else []
    cfg["data"]["val_sets"] = []
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return [sys.executable, "-m", "headsup.cli", "fit", "--config", str(config), "--data.crop_size", "16",
            "--ckpt_path", "last"]


def _fit(cmd, tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)


def _updates(ckpt) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]["generator_updates"])


def _logged_updates(run_dir) -> list[list[int]]:
    """`train/generator_updates` of each TensorBoard event file (one per process), oldest first."""
    runs = []
    for path in sorted(run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0})
        events.Reload()
        runs.append([int(e.value) for e in events.Scalars("train/generator_updates")])
    return runs


def test_sigterm_between_saves_saves_last_and_resume_loses_and_repeats_nothing(tmp_path, samples_dir, tiny_sd_dir):
    """SIGTERM (SLURM's preemption notice) after update 5, two updates after the periodic save at 3:
    last.ckpt holds exactly 5 updates, and `--ckpt_path last` logs updates 6 and 7 only."""
    cmd = _cli_config(tmp_path, samples_dir, tiny_sd_dir, every=3, max_steps=7,
                      probe={"class_path": "tests.ddp_probe.SigtermAt", "init_args": {"update": 5}})
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stopped = _fit(cmd, tmp_path)
    assert "Received SIGTERM" in stopped.stderr, stopped.stderr[-3000:]
    assert stopped.returncode == 143 and "--ckpt_path last resumes it" in stopped.stderr  # not "done" to SLURM
    assert _updates(last) == 5  # Lightning stops after the batch that received the signal
    assert not list(last.parent.glob("*.partial"))
    resumed = _fit(cmd, tmp_path)  # the probe fires at update 5 only: the resumed run starts at 6
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _updates(last) == 7
    assert _logged_updates(tmp_path / "run") == [[1, 2, 3, 4, 5], [6, 7]]


def test_kill_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, samples_dir, tiny_sd_dir):
    """SIGKILL half-way through writing last.ckpt at update 4: the complete one of update 2 stays,
    loads, and `--ckpt_path last` resumes from it to the end."""
    cmd = _cli_config(tmp_path, samples_dir, tiny_sd_dir, every=2, max_steps=5,
                      probe={"class_path": "tests.ddp_probe.KillWhileSaving", "init_args": {"update": 4}})
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    killed = _fit(cmd, tmp_path)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert _updates(last) == 2
    assert (last.parent / "last.ckpt.partial").exists()  # what the kill interrupted
    resumed = _fit(_cli_config(tmp_path, samples_dir, tiny_sd_dir, every=2, max_steps=5), tmp_path)  # no probe
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _updates(last) == 5
    assert not list(last.parent.glob("*.partial"))  # the next save of the same name replaced it
    assert _logged_updates(tmp_path / "run")[-1] == [3, 4, 5]


class _Linear(L.LightningModule):
    """One linear layer on random data; raises at training batch `fail_at` (if given)."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)
        self.fail_at = fail_at

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("injected failure")
        return self.layer(batch).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.randn(64, 4), batch_size=4)


def _trainer(callback, max_steps: int) -> L.Trainer:
    return L.Trainer(accelerator="cpu", max_steps=max_steps, callbacks=[callback], logger=False,
                     enable_progress_bar=False, enable_model_summary=False)


def _global_step(path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


def test_lightning_save_on_exception_still_works(tmp_path):
    callback = Checkpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=100, save_on_exception=True)
    with pytest.raises(RuntimeError, match="injected failure"):
        _trainer(callback, max_steps=10).fit(_Linear(fail_at=3))
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == ["epoch=0-step=3.ckpt", "last.ckpt"]  # Lightning's exception checkpoint, and last
    assert _global_step(tmp_path / "epoch=0-step=3.ckpt") == _global_step(tmp_path / "last.ckpt") == 3


def test_the_modelcheckpoint_internals_checkpoint_relies_on_still_behave(tmp_path):
    """Lightning 2.6 internals (pinned in pyproject.toml): a newer Lightning that renames them or stops
    routing saves through them fails here, not silently in a preempted run."""
    for name, params in [("_save_checkpoint", ["self", "trainer", "filepath"]),
                         ("_save_last_checkpoint", ["self", "trainer", "monitor_candidates"]),
                         ("_monitor_candidates", ["self", "trainer"]),
                         ("on_exception", ["self", "trainer", "pl_module", "exception"])]:
        assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters) == params, name
    callback = Checkpoint(dirpath=tmp_path, save_last=True, every_n_train_steps=2)
    assert callback._last_global_step_saved == 0 and callback._last_checkpoint_saved == ""
    trainer = _trainer(callback, max_steps=3)
    written, save = [], trainer.strategy.checkpoint_io.save_checkpoint

    def record(checkpoint, path, **kwargs):
        written.append(path)
        save(checkpoint, path, **kwargs)

    trainer.strategy.checkpoint_io.save_checkpoint = record
    trainer.fit(_Linear())
    # step 2: the periodic checkpoint and last; step 3 (max_steps, between two saves): last, by on_train_end
    assert [os.path.basename(p) for p in written] == ["epoch=0-step=2.ckpt.partial", "last.ckpt.partial",
                                                      "last.ckpt.partial"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch=0-step=2.ckpt", "last.ckpt"]
    assert _global_step(tmp_path / "last.ckpt") == 3
    assert callback._last_global_step_saved == 3
    assert callback._last_checkpoint_saved == callback.last_model_path == str(tmp_path / "last.ckpt")
    assert callback._monitor_candidates(trainer)["step"] == 3


def test_checkpoints_on_an_object_store_are_written_in_place(tmp_path):
    """No `.partial` + rename where there is no local rename (fsspec's in-memory filesystem)."""
    import fsspec

    callback = Checkpoint(dirpath="memory://headsup-ckpt", save_last=True, every_n_train_steps=2)
    _trainer(callback, max_steps=2).fit(_Linear())
    fs = fsspec.filesystem("memory")
    assert sorted(os.path.basename(p) for p in fs.ls("/headsup-ckpt", detail=False)) == [
        "epoch=0-step=2.ckpt", "last.ckpt"]
