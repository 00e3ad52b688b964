"""One checkpoint, one image: `headsup test`, `headsup predict`, `headsup-tools enhance` on the checkpoint and on
its export, and `SRPipeline` from Python agree byte for byte, with the run's EMA weights; a reference model
predicts under bf16-mixed (face detection stays in fp32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headsup.callbacks.ema import averaged_weights
from headsup.cli import main
from headsup.data.io import read_image, to_uint
from headsup.inference.blending import CheckpointModel
from headsup.inference.pipeline import SRPipeline
from headsup.tools import main as tools


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
    assert tools(["export", str(ckpt), str(tmp_path / "export")]) == 0
    for name, weights in (("enhance", ckpt), ("enhance_export", tmp_path / "export")):
        assert tools(["enhance", str(photo), str(tmp_path / name), "--weights", str(weights), "--color-fix", "none",
                      "--workers", "0", "--device", "cpu"]) == 0
    names = ("predict", "predict_plain", "enhance", "enhance_export")
    images = {name: _pixels(tmp_path / name / "coffee.png") for name in names}
    pipe = SRPipeline.from_pretrained(tmp_path / "export", color_fix="none")  # from Python, quantised as saved
    sr = pipe(read_image(photo).rgb[None])[0]
    images["SRPipeline"] = to_uint(sr, 8).astype(np.int16)
    assert tested.shape == (128, 192, 3)
    for name, image in images.items():
        assert np.array_equal(image, tested), f"{name} differs from test by {np.abs(image - tested).max()} levels"

    # the live (non-averaged) weights give another image: the one above is the average's
    live = SRPipeline.from_pretrained(ckpt, raw=True, color_fix="none")(read_image(photo).rgb[None])[0]
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
