"""Every weight file a run loads, when missing, is reported with the config key that sets it."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT

TINY = ROOT / "configs" / "experiments" / "tiny_headsup.yaml"
KEYS = {
    "backbone": "model.generator.init_args.backbone.init_args.path",
    "lpips": "model.objectives.lpips.init_args.vgg_weights",
    "face_lpips": "model.objectives.face_lpips.init_args.vgg_weights",
    "identity": "model.objectives.identity.init_args.identity.init_args.weights",
    "face_gan": "model.objectives.face_gan.init_args.discriminator.init_args.weights",
}


@pytest.mark.parametrize("missing", list(KEYS))
def test_missing_weight_file_names_its_config_key(tmp_path, capsys, tiny_weights, missing):
    from headsup.cli import main

    weights = tiny_weights
    cfg = yaml.safe_load(TINY.read_text())
    objectives = cfg["model"]["objectives"]
    cfg["model"]["generator"]["init_args"]["backbone"] = {"class_path": "headsup.testing.tiny.TinySD"}
    objectives.pop("gan")
    objectives.pop("vsd")
    for name in ("lpips", "face_lpips"):
        objectives[name]["init_args"]["vgg_weights"] = str(weights["vgg"])
    objectives["identity"]["init_args"]["identity"]["init_args"]["weights"] = str(weights["facenet"])
    objectives["face_gan"]["init_args"]["discriminator"]["init_args"]["weights"] = str(weights["test_resnet"])
    if missing == "backbone":
        cfg["model"]["generator"]["init_args"]["backbone"] = {
            "class_path": "headsup.models.backbone.DiffusersFolder", "init_args": {"path": ""}}
    node = cfg
    *parents, last = KEYS[missing].split(".")
    for part in parents:
        node = node[part]
    node[last] = str(tmp_path / f"no_{missing}")
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"--{KEYS[missing]}" in err and f"no_{missing}" in err, err
