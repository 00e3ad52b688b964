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
    # fragments (trainer/, model/, data/, degradation/) are checked on top of the quickstart
    configs = [path] if "experiments" in path.parts else [QUICKSTART, path]
    assert parse(*configs) == 0, capsys.readouterr().err


def test_misspelt_key_fails(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  grad_clipp: 1.0\n")
    assert parse(QUICKSTART, bad) != 0
    assert "grad_clipp" in capsys.readouterr().err


def test_misspelt_nested_init_arg_fails(capsys):
    assert parse(QUICKSTART, extra=["--model.objectives.mse.init_args.wieght", "2"]) != 0
    assert "wieght" in capsys.readouterr().err
