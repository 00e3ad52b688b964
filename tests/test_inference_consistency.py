"""One checkpoint, one image: `headsup test`, `headsup predict` and `headsup-tools enhance` agree, with the
run's EMA weights; a reference model predicts under bf16-mixed (face detection stays in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from headsup.callbacks.ema import averaged_weights
from headsup.cli import main
from headsup.data.io import read_image
from headsup.inference.blending import CheckpointModel, load_checkpoint
from headsup.tools import main as tools
from tests.conftest import make_config


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory, samples_dir, tiny_sd_dir):
    """A few updates of a reference model with TrainableEMA; its LQ-only test set is the photo enhanced below."""
    tmp = tmp_path_factory.mktemp("ema_run")
    photos = tmp / "photos"
    photos.mkdir()
    coffee = Image.open(samples_dir / "test" / "general" / "coffee.png").convert("RGB")  # no face: same inputs
    coffee.resize((48, 32), Image.Resampling.BICUBIC).save(photos / "coffee.png")
    config = make_config(tmp, samples_dir, tiny_sd_dir, max_steps=4, val_check_interval=1000)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["generator"]["init_args"]["reference"] = True
    cfg["model"]["optimizer"]["init_args"]["lr"] = 1.0e-2  # EMA and live weights far apart after 4 updates
    cfg["data"].update(val_sets=[], test_sets=[{"name": "real", "lq": str(photos), "kind": "general"}],
                       crop_size=16)
    without_ema = tmp / "without_ema.yaml"  # the same run's config as a user might write it for predict
    without_ema.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cfg["trainer"]["callbacks"].append({"class_path": "headsup.callbacks.TrainableEMA", "init_args": {"decay": 0.9}})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["fit", "--config", str(config)]) == 0
    return tmp, config, without_ema, tmp / "run" / "checkpoints" / "last.ckpt", photos / "coffee.png"


def _pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_test_predict_and_enhance_give_the_same_ema_image(ema_run, tmp_path):
    tmp, config, without_ema, ckpt, photo = ema_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    ema = averaged_weights(state)
    assert ema and any(not torch.equal(v, state["state_dict"][k]) for k, v in ema.items())  # they differ

    assert main(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--model.eval_color_fix", "none"]) == 0
    tested = _pixels(tmp / "run" / "test_images" / "real" / "coffee.png")
    # predict with and without the callback configured: the checkpoint's average either way
    for name, cfg in (("predict", config), ("predict_plain", without_ema)):
        assert main(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt), "--data.predict_input", str(photo),
                     "--writer.output_dir", str(tmp_path / name), "--writer.color_fix", "none"]) == 0
    assert tools(["enhance", str(photo), str(tmp_path / "enhance"), "--weights", str(ckpt), "--color-fix", "none",
                  "--workers", "0", "--device", "cpu"]) == 0
    images = {name: _pixels(tmp_path / name / "coffee.png") for name in ("predict", "predict_plain", "enhance")}
    assert tested.shape == (128, 192, 3)
    for name, image in images.items():
        assert np.array_equal(image, tested), f"{name} differs from test by {np.abs(image - tested).max()} levels"

    # the live (non-averaged) weights give another image: the one above is the average's
    system = load_checkpoint(str(ckpt))
    system.load_state_dict({k: state["state_dict"][k] for k in ema}, strict=False)
    with torch.no_grad():
        live = system.generator(read_image(photo).rgb[None])[0]
    live = (live.clamp(0, 1) * 255).round().permute(1, 2, 0).numpy().astype(np.int16)
    assert np.abs(live - tested).max() >= 3


def test_checkpoint_model_of_the_blending_baseline_uses_the_average(ema_run):
    _, _, _, ckpt, photo = ema_run
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = CheckpointModel(str(ckpt))
    params = dict(model.generator.named_parameters())
    for key, value in averaged_weights(state).items():
        assert torch.equal(params[key.removeprefix("generator.")].detach(), value)


def test_reference_model_predicts_and_enhances_under_bf16(ema_run, samples_dir, tmp_path, capsys):
    tmp, config, _, ckpt, _ = ema_run
    face = tmp_path / "face.png"  # MTCNN finds the astronaut on the x4 bicubic of this 64 px input
    Image.open(samples_dir / "predict" / "astronaut.png").resize((64, 64), Image.Resampling.BICUBIC).save(face)
    reference = samples_dir / "portrait" / "astronaut" / "astronaut_mirrored.png"
    capsys.readouterr()
    assert main(["predict", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.precision", "bf16-mixed",
                 "--data.predict_input", str(face), "--data.predict_reference", str(reference),
                 "--writer.output_dir", str(tmp_path / "predict")]) == 0
    assert "1 written" in (out := capsys.readouterr().out) and "1 with a reference photo" in out
    assert tools(["enhance", str(face), str(tmp_path / "enhance"), "--weights", str(ckpt), "--precision",
                  "bf16-mixed", "--reference", str(reference), "--workers", "0", "--device", "cpu"]) == 0
    assert "1 written" in (out := capsys.readouterr().out) and "1 with a reference photo" in out
    for name in ("predict", "enhance"):
        assert Image.open(tmp_path / name / "face.png").size == (256, 256)
