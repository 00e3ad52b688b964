"""Faults training survives (see the README's table): each test names the fault it injects."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from headsup.data.datamodule import SRDataModule
from headsup.data.specs import DatasetSpec
from headsup.models.generator import OneStepSR
from headsup.objectives.base import Objective
from headsup.system import SRSystem
from headsup.testing.tiny import TinySD


class FaultyMSE(Objective):
    """Pixel MSE whose value (`fault="loss"`) or gradient (`fault="grad"`) is NaN on chosen calls."""

    def __init__(self, bad_calls: set[int] | None = None, fault: str = "loss") -> None:
        super().__init__()
        self.bad_calls, self.fault, self.calls = bad_calls, fault, 0

    def generator_loss(self, ctx):
        call, self.calls = self.calls, self.calls + 1
        loss = torch.nn.functional.mse_loss(ctx.sr.float(), ctx.hq.float())
        if self.bad_calls is None or call in self.bad_calls:
            if self.fault == "loss":
                return loss * float("nan")
            return loss + (ctx.sr - ctx.sr.detach()).pow(2).sum().sqrt()  # value unchanged, gradient 0/0
        return loss


def _fit(samples_dir, objective, max_steps=4, max_bad_steps=10):
    torch.manual_seed(0)
    system = SRSystem(generator=OneStepSR(TinySD()), objectives={"mse": objective}, max_bad_steps=max_bad_steps)
    dm = SRDataModule(train=[DatasetSpec(name="t", hq=str(samples_dir / "train"))], crop_size=32, batch_size=2,
                      num_workers=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    return system, trainer, dm


def _trainable(system):
    return {n: p.detach().clone() for n, p in system.generator.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("fault", ["loss", "grad"])
def test_nan_steps_are_skipped_and_training_goes_on(samples_dir, fault):
    system, trainer, dm = _fit(samples_dir, FaultyMSE({1, 2}, fault))
    with pytest.warns(UserWarning, match="skipped: non-finite"):
        trainer.fit(system, datamodule=dm)
    assert system.skipped_steps == 2
    assert int(system.generator_updates) == 4 == trainer.global_step  # max_steps counts good updates
    assert all(torch.isfinite(p).all() for p in _trainable(system).values())


def test_consecutive_nan_steps_stop_training_before_weights_turn_nan(samples_dir):
    system, trainer, dm = _fit(samples_dir, FaultyMSE(None), max_bad_steps=3)
    before = _trainable(system)
    with pytest.raises(FloatingPointError, match="3 generator updates in a row"):
        trainer.fit(system, datamodule=dm)
    after = _trainable(system)
    assert all(torch.equal(before[n], after[n]) for n in before)  # nothing was applied


def test_decompression_bomb_is_refused_with_the_file_named(tmp_path, monkeypatch):
    from PIL import Image

    from headsup.data import io

    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 10000)).save(bomb)  # 200 Mpx of zeros: a 30 KB file
    assert bomb.stat().st_size < 100_000
    with pytest.raises(io.ImageReadError, match=r"bomb\.png.*decompression bomb"):
        io.read_image(bomb)  # Pillow's own check (above 179 Mpx) fires at open, reworded with the file
    big = tmp_path / "big.png"
    Image.new("1", (2000, 1000)).save(big)
    monkeypatch.setattr(io, "MAX_PIXELS", 1_000_000)  # our limit (HEADSUP_MAX_PIXELS), before decoding
    with pytest.raises(io.ImageReadError, match=r"big\.png claims 2000 x 1000 = 2 Mpx, above the limit of 1 Mpx"):
        io.read_image(big)


def test_odd_paths_read_or_fail_clearly(tmp_path):
    import numpy as np
    from PIL import Image

    from headsup.data.io import ImageReadError, read_image

    odd = tmp_path / "dossier été" / "portrait n°1 (copie).png"
    odd.parent.mkdir()
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(odd)
    assert read_image(odd).rgb.shape == (3, 8, 8)
    with pytest.raises(ImageReadError, match="folder"):
        read_image(odd.parent)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty.jpg"):
        read_image(tmp_path / "empty.jpg")


QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "experiments" / "quickstart.yaml"


class _RunsCode:  # what a malicious checkpoint pickles: unpickling it would call os.system
    def __reduce__(self):
        import os

        return (os.system, ("touch PWNED",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch, capsys):
    from headsup.tools import main as tools

    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"x": _RunsCode()}}, evil)
    (tmp_path / "in.png").write_bytes(b"")
    assert tools(["enhance", str(tmp_path / "in.png"), str(tmp_path / "out"), "--weights", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "evil.ckpt" in err and "refused" in err
    # the other two ways a checkpoint comes in: --ckpt_path and the blending baseline's CheckpointModel
    from headsup.cli import main
    from headsup.inference.blending import CheckpointModel

    assert main(["test", "--config", str(QUICKSTART), "--ckpt_path", str(evil)]) == 2
    err = capsys.readouterr().err
    assert "evil.ckpt (--ckpt_path)" in err and "refused" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="evil.ckpt.*refused"):
        CheckpointModel(str(evil))
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("key, value, shown", [
    ("model.generator.init_args.scale", "four", 'Parser key "scale"'),
    ("data.batch_size", "two", 'Parser key "data.batch_size"'),
    ("trainer.max_steps", "1.5", 'Parser key "trainer.max_steps"'),
])
@pytest.mark.parametrize("where", ["command line", "config file"])
def test_config_value_of_the_wrong_type_is_refused_naming_the_key(tmp_path, capsys, key, value, shown, where):
    from headsup.cli import main

    args = ["fit", "--config", str(QUICKSTART)]
    if where == "command line":
        args += [f"--{key}", value]
    else:
        cfg = yaml.safe_load(QUICKSTART.read_text())
        node = cfg
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
        (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
        args[2] = str(tmp_path / "bad.yaml")
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert shown in err and value in err
    assert "usage:" not in err and len(err.splitlines()) < 8  # the error, not a hundred lines of usage first


@pytest.mark.parametrize("mode, ext", [("CMYK", "jpg"), ("CMYK", "tif"), ("P", "png"), ("LA", "png"), ("1", "png"),
                                       ("YCbCr", "jpg"), ("F", "tif"), ("I;16", "png")])
def test_every_pillow_mode_reads_as_rgb_in_unit_range(tmp_path, mode, ext):
    from headsup.data.io import read_image

    rng = np.random.default_rng(0)
    rgb = Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
    img = rgb.convert(mode)
    if mode == "F":  # float images are [0, 1]
        img = Image.fromarray(np.asarray(img, dtype=np.float32) / 255)
    path = tmp_path / f"odd {mode}.{ext}"
    img.save(path)
    loaded = read_image(path)
    assert loaded.rgb.shape == (3, 20, 30) and loaded.rgb.dtype == torch.float32
    assert 0 <= float(loaded.rgb.min()) and float(loaded.rgb.max()) <= 1
    if mode in ("P", "1", "F"):  # lossless: what Pillow's own conversion gives
        expected = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255
        if mode == "F":
            expected = np.repeat(np.asarray(img)[..., None], 3, axis=2)
        assert np.allclose(loaded.rgb.permute(1, 2, 0).numpy(), expected, atol=1e-6)
    assert (loaded.alpha is not None) == (mode == "LA")


@pytest.mark.parametrize("values, match", [(np.float32(255.0), "float pixels from 0 to 255"),
                                           (np.float32(np.nan), "NaN or inf present"),
                                           (np.int32(70000), "do not fit 16 bits")])
def test_pixel_values_outside_the_readable_range_are_refused(tmp_path, values, match):
    from headsup.data.io import ImageReadError, read_image

    array = np.zeros((8, 8), dtype=values.dtype)
    array[2, 3] = values
    path = tmp_path / "scientific.tif"
    Image.fromarray(array).save(path)
    with pytest.raises(ImageReadError, match=f"scientific.tif.*{match}"):
        read_image(path)
