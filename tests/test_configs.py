"""Every shipped YAML parses with the real CLI parser; a misspelt key fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from headsup.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "experiments" / "quickstart.yaml"
YAMLS = sorted(p for d in ("configs", "benchmarks") for p in (ROOT / d).rglob("*.yaml"))


def parse(*configs: Path | str, extra: list[str] | None = None) -> int:
    args = ["fit"] + [a for c in configs for a in ("--config", str(c))] + (extra or []) + ["--print_config"]
    with pytest.raises(SystemExit) as exc:
        build_cli(args)
    return exc.value.code


def test_configs_were_found():
    assert QUICKSTART in YAMLS


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_config_parses(path, capsys):
    import yaml

    content = yaml.safe_load(path.read_text())
    if isinstance(content, list):  # a test-set list (benchmarks/*.yaml)
        assert parse(QUICKSTART, extra=["--data.test_sets", str(path)]) == 0, capsys.readouterr().err
        return
    if "methods" in content:  # a comparison (benchmarks/compare.py): every method with the shared configs and sets
        for name, method in content["methods"].items():
            configs = [ROOT / c for c in [*method.get("configs", []), *content.get("configs", [])]]
            base = [] if any("experiments" in c.parts for c in configs) else [QUICKSTART]
            for sets in content.get("sets", []):
                assert parse(*base, *configs, extra=["--data.test_sets", str(ROOT / sets)]) == 0, \
                    f"{name}: {capsys.readouterr().err}"
        return
    # fragments (trainer/, model/, data/, degradation/) are checked on top of the quickstart
    configs = [path] if "experiments" in path.parts else [QUICKSTART, path]
    assert parse(*configs) == 0, capsys.readouterr().err


def test_misspelt_key_in_a_test_set_list_fails(tmp_path, capsys):
    bad = tmp_path / "sets.yaml"
    bad.write_text("- {name: x, hq: /data/x, centre_crop: 64}\n")
    assert parse(QUICKSTART, extra=["--data.test_sets", str(bad)]) != 0


def test_misspelt_key_fails(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  grad_clipp: 1.0\n")
    assert parse(QUICKSTART, bad) != 0
    assert "grad_clipp" in capsys.readouterr().err


def test_misspelt_nested_init_arg_fails(capsys):
    assert parse(QUICKSTART, extra=["--model.objectives.mse.init_args.wieght", "2"]) != 0
    assert "wieght" in capsys.readouterr().err


def test_realesrgan_fragment_builds_the_x4plus_training_pipeline(tiny_sd_dir):
    import torch
    from skimage.data import astronaut

    from headsup.degradations import RealESRGANDegradation

    fragment = ROOT / "configs" / "degradation" / "realesrgan_x4.yaml"
    cli = build_cli(["--config", str(QUICKSTART), "--config", str(fragment), "--data.crop_size", "256",
                     "--model.generator.init_args.backbone.init_args.path", str(tiny_sd_dir)], run=False)
    dm = cli.datamodule
    assert isinstance(dm.degradation, RealESRGANDegradation) and dm.sharpen_gt and dm.pool.size == 180
    assert list(dm.degradation.stages[0]["kernel_prob"]) == [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
    hq = torch.from_numpy(astronaut()[:256, 100:356]).permute(2, 0, 1).float()[None].repeat(4, 1, 1, 1) / 255
    dm.trainer = cli.trainer
    cli.trainer.training = True
    batch = dm.on_after_batch_transfer({"hq": hq.clone()}, 0)
    assert batch["lq"].shape == (4, 3, 64, 64) and torch.equal(batch["hq_orig"], hq)
    assert not torch.equal(batch["hq"], hq) and dm.pool.filled == 4
