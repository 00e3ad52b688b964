"""TrainableEMA: the average of the trainable generator weights, used for evaluation after updates."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from headsup.callbacks.ema import TrainableEMA
from headsup.cli import build_cli, main
from tests.conftest import make_config


def test_average_and_swap():
    module = SimpleNamespace(generator=torch.nn.Linear(2, 1), generator_updates=torch.tensor(0), device="cpu")
    ema = TrainableEMA(decay=0.5)
    trainer = SimpleNamespace(ckpt_path=None)
    ema.on_fit_start(trainer, module)
    start = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    ema.on_validation_start(trainer, module)  # no update yet: evaluation uses the live weights
    assert ema._live is None
    with torch.no_grad():
        for p in module.generator.parameters():
            p.add_(1.0)
    module.generator_updates = torch.tensor(1)
    ema.on_train_batch_end(trainer, module, None, None, 0)
    for n, p in module.generator.named_parameters():
        assert torch.allclose(ema.shadow[n], 0.5 * start[n] + 0.5 * p.detach())
    live = {n: p.detach().clone() for n, p in module.generator.named_parameters()}
    ema.on_validation_start(trainer, module)
    assert all(torch.equal(p, ema.shadow[n]) for n, p in module.generator.named_parameters())
    ema.on_validation_end(trainer, module)
    assert all(torch.equal(p, live[n]) for n, p in module.generator.named_parameters())
    with pytest.raises(ValueError, match="decay"):
        TrainableEMA(decay=2.0)


def test_checkpointed_average_is_used_by_test(tmp_path, samples_dir, tiny_sd_dir):
    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=6, val_check_interval=1000)
    cfg = yaml.safe_load(config.read_text())
    cfg["trainer"]["callbacks"].append({"class_path": "headsup.callbacks.TrainableEMA",
                                        "init_args": {"decay": 1.0}})  # the average stays at the start
    cfg["data"]["val_sets"] = []
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    untrained = build_cli(["--config", str(config)], run=False)
    untrained.trainer.test(untrained.model, datamodule=untrained.datamodule)
    start = untrained.model.test_results
    cli = build_cli(["--config", str(config)], run=False)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert main(["test", "--config", str(config), "--ckpt_path", str(ckpt)]) == 0
    with_ema = json.loads((tmp_path / "run" / "results.json").read_text())["sets"]
    for name in ("portrait", "general"):
        assert with_ema[name]["headsup"] == pytest.approx(start[name]["headsup"], rel=1e-6)
    # the live weights did train, and are what the checkpoint holds
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    ema = state["callbacks"]["TrainableEMA"]["shadow"]
    live = {k.removeprefix("generator."): v for k, v in state["state_dict"].items() if k.startswith("generator.")}
    assert any(not torch.equal(ema[k], live[k]) for k in ema)
