"""Two-process CPU DDP (gloo) through the real CLI: trains, syncs and checkpoints once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT, make_config

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_process_cpu_ddp_fit(tmp_path, samples_dir, tiny_sd_dir, accumulate):
    """Plain DDP, also with gradient accumulation (every micro-batch synchronises its gradients)."""
    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=4, val_check_interval=2)
    cmd = [sys.executable, "-m", "headsup.cli", "fit", "--config", str(config), "--data.crop_size", "16",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu",
           "--model.accumulate", str(accumulate)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["generator_updates"]) == 4


def test_two_process_ddp_full_objective(tmp_path, samples_dir, tiny_sd_dir):
    """Every term and both helper optimizers under 2-process DDP, with different degradations per rank."""
    import yaml

    from headsup.testing.tiny import write_tiny_weights
    from tests.test_full_objective import build_portrait_set_for, tiny_config

    weights = write_tiny_weights(tmp_path / "weights")
    config = tiny_config(tmp_path, samples_dir, tiny_sd_dir, weights, build_portrait_set_for(samples_dir),
                         max_steps=3, val_check_interval=1000)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"].append({"class_path": "tests.ddp_probe.RecordLQ",
                                        "init_args": {"out": str(tmp_path / "probe")}})
    cfg["data"]["degradation"] = {"class_path": "headsup.degradations.FaceDegradation", "init_args": {"scale": 4}}
    cfg["data"]["val_sets"] = []
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "headsup.cli", "fit", "--config", str(config),
           "--trainer.strategy", "ddp_find_unused_parameters_true", "--trainer.devices", "2",
           "--trainer.accelerator", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert int(ckpt["state_dict"]["generator_updates"]) == 3
    ranks = [(tmp_path / "probe" / f"lq_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == 3 and ranks[0] != ranks[1]


def test_test_metrics_equal_single_process_and_two_process_ddp(tmp_path, samples_dir, tiny_sd_dir):
    """The same checkpoint and sets give the same numbers on 1 and on 2 processes (synced metrics)."""
    import json

    import yaml

    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=2, val_check_interval=1000)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    fit = [sys.executable, "-m", "headsup.cli", "fit", "--config", str(config), "--data.crop_size", "16",
           "--data.val_sets", "[]"]
    assert subprocess.run(fit, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path).returncode == 0
    ckpt = str(tmp_path / "run" / "checkpoints" / "last.ckpt")
    sets = {}
    for devices in (1, 2):
        cfg = yaml.safe_load(config.read_text())
        run = tmp_path / f"test{devices}"
        cfg["trainer"]["default_root_dir"] = str(run)
        cfg["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path), name=f"test{devices}")
        cfg["data"]["test_sets"].append({"name": "odd", "hq": str(samples_dir / "train"), "center_crop": 32})
        path = tmp_path / f"test{devices}.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmd = [sys.executable, "-m", "headsup.cli", "test", "--config", str(path), "--ckpt_path", ckpt,
               "--trainer.devices", str(devices), "--trainer.accelerator", "cpu", "--results.save_images", "false"]
        if devices == 2:
            cmd += ["--trainer.strategy", "ddp"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
        sets[devices] = json.loads((run / "results.json").read_text())["sets"]
    assert sets[1]["odd"]["images"] == sets[2]["odd"]["images"] == 17  # uneven: no image counted twice
    for name in ("portrait", "general", "odd"):
        assert sets[1][name]["images"] == sets[2][name]["images"]
        for method in ("headsup", "bicubic"):
            for metric, value in sets[1][name][method].items():
                assert abs(sets[2][name][method][metric] - value) < 1e-6, (name, method, metric)


def test_nan_loss_on_one_rank_is_skipped_by_both_ranks(tmp_path, samples_dir, tiny_sd_dir):
    """Rank 1's loss is NaN at its second update: both ranks skip it (one decision for all), stay in
    step and end with identical weights after max_steps good updates."""
    import signal

    import yaml

    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=4, val_check_interval=1000,
                         limit_val_batches=0)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["objectives"] = {"mse": {"class_path": "tests.ddp_probe.NanOnRank",
                                          "init_args": {"rank": 1, "call": 1}}}
    cfg["trainer"]["callbacks"].append({"class_path": "tests.ddp_probe.DumpState",
                                        "init_args": {"out": str(tmp_path / "probe")}})
    cfg["data"]["val_sets"] = []
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "headsup.cli", "fit", "--config", str(config), "--data.crop_size", "16",
           "--trainer.strategy", "ddp", "--trainer.devices", "2", "--trainer.accelerator", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:  # ranks that disagree on a skip wait for each other forever
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("2-process run hung: the ranks went out of step")
    assert proc.returncode == 0, err[-3000:]
    ranks = [torch.load(tmp_path / "probe" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for state in ranks:
        assert (state["skipped_steps"], state["generator_updates"], state["global_step"]) == (1, 4, 4)
    assert ranks[0]["weights"].keys() == ranks[1]["weights"].keys() and ranks[0]["weights"]
    for name, weight in ranks[0]["weights"].items():
        assert torch.equal(weight, ranks[1]["weights"][name]), name
