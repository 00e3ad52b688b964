"""Two-process CPU DDP (gloo) through the real CLI: trains, syncs and checkpoints once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import make_config

pytestmark = pytest.mark.slow


def test_two_process_cpu_ddp_fit(tmp_path, samples_dir, tiny_sd_dir):
    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=4, val_check_interval=2)
    cmd = [sys.executable, "-m", "headsup.cli", "fit", "--config", str(config), "--data.crop_size", "16",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["generator_updates"]) == 4
