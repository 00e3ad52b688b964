"""`predict` with face-aware models: detected faces, per-image references, notes; skip-existing."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from headsup.callbacks.predict_writer import PredictWriter
from headsup.data.datamodule import SRDataModule
from headsup.models.generator import OneStepSR
from headsup.system import SRSystem
from headsup.testing.tiny import TinySD


def _predict(system, inputs, out, reference=None, **writer):
    writer = PredictWriter(output_dir=str(out), color_fix="none", **writer)
    dm = SRDataModule(predict_input=str(inputs), predict_reference=str(reference) if reference else None,
                      num_workers=0)
    trainer = L.Trainer(accelerator="cpu", logger=False, callbacks=[writer], enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.predict(system, datamodule=dm, return_predictions=False)
    return writer


@pytest.fixture(scope="module")
def reference_system():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), reference=True).eval()
    with torch.no_grad():  # let the (zero-initialised) reference and mask channels act, as after training
        gen.unet.conv_in.weight[:, gen.latent_channels :] = 0.5 * torch.randn_like(
            gen.unet.conv_in.weight[:, gen.latent_channels :])
    return SRSystem(generator=gen)


@pytest.fixture()
def inputs(samples_dir, tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    for name in ("astronaut", "camera", "logo"):  # a portrait; grayscale and RGBA photos where MTCNN finds no face
        img = Image.open(samples_dir / "predict" / f"{name}.png")  # at half size: the tiny UNet runs at 4x
        img.resize((img.width // 2, img.height // 2), Image.Resampling.BICUBIC).save(src / f"{name}.png")
    refs = tmp_path / "refs"
    refs.mkdir()
    Image.open(samples_dir / "portrait" / "astronaut" / "astronaut_mirrored.png").save(refs / "astronaut.jpg")
    return src, refs


def test_reference_is_matched_by_name_and_changes_the_face(reference_system, inputs, tmp_path, capsys):
    src, refs = inputs
    with_ref = _predict(reference_system, src, tmp_path / "with", refs)
    summary = capsys.readouterr().out
    assert [p.name for p in with_ref.referenced] == ["astronaut.png"]
    assert "1 with a reference photo" in summary
    assert sorted(with_ref.notes) == [f"{src / name}.png: no face found: enhanced without face conditioning"
                                      for name in ("camera", "logo")]  # processed, and said
    assert sorted(p.name for p in with_ref.written) == ["astronaut.png", "camera.png", "logo.png"]
    without = _predict(reference_system, src, tmp_path / "without")
    assert not without.referenced
    a = np.asarray(Image.open(tmp_path / "with" / "astronaut.png"), dtype=np.float64)
    b = np.asarray(Image.open(tmp_path / "without" / "astronaut.png"), dtype=np.float64)
    assert a.shape == b.shape == (256, 256, 3) and np.abs(a - b).mean() > 0.5  # the reference reached the UNet
    c = np.asarray(Image.open(tmp_path / "with" / "camera.png"), dtype=np.float64)
    d = np.asarray(Image.open(tmp_path / "without" / "camera.png"), dtype=np.float64)
    assert np.array_equal(c, d)  # no face, no reference: identical


def test_one_reference_file_for_all_and_bad_references_are_reported(reference_system, inputs, tmp_path):
    src, refs = inputs
    writer = _predict(reference_system, src, tmp_path / "one", refs / "astronaut.jpg")
    assert [p.name for p in writer.referenced] == ["astronaut.png"]  # the others have no face to give it to
    faceless = tmp_path / "faceless.png"
    Image.fromarray(np.full((64, 64, 3), 127, np.uint8)).save(faceless)
    writer = _predict(reference_system, src / "astronaut.png", tmp_path / "faceless", faceless)
    assert not writer.referenced and any("no face found in the reference" in n for n in writer.notes)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    writer = _predict(reference_system, src / "astronaut.png", tmp_path / "broken", broken)
    assert writer.written and any("reference unreadable" in n and "broken.png" in n for n in writer.notes)
    with pytest.raises(FileNotFoundError, match="predict_reference"):
        _predict(reference_system, src, tmp_path / "x", tmp_path / "no_such_refs")


def test_model_without_references_says_it_ignores_them(inputs, tmp_path):
    src, refs = inputs
    writer = _predict(SRSystem(generator=OneStepSR(TinySD()).eval()), src / "astronaut.png", tmp_path / "o", refs)
    assert writer.written and any("takes no reference" in n for n in writer.notes)


def test_existing_outputs_are_not_recomputed(inputs, tmp_path, monkeypatch):
    src, _ = inputs
    system = SRSystem(generator=OneStepSR(TinySD()).eval())
    first = _predict(system, src, tmp_path / "out")
    assert len(first.written) == 3
    kept = (tmp_path / "out" / "camera.png").read_bytes()
    (tmp_path / "out" / "astronaut.png").unlink()
    calls = []
    forward = system.generator.forward
    monkeypatch.setattr(system.generator, "forward", lambda lq, **kw: calls.append(lq.shape) or forward(lq, **kw))
    second = _predict(system, src, tmp_path / "out")
    assert [p.name for p in second.written] == ["astronaut.png"] and len(calls) == 1  # camera was not even run
    assert sorted(p.name for p in second.skipped) == ["camera.png", "logo.png"]
    assert (tmp_path / "out" / "camera.png").read_bytes() == kept


def test_non_finite_half_precision_output_is_redone_in_fp32(inputs, tmp_path, monkeypatch):
    src, _ = inputs
    system = SRSystem(generator=OneStepSR(TinySD()).eval())
    forward = system.generator.forward

    def overflowing(lq, **kw):  # what fp16 overflow looks like: NaN/inf inside autocast only
        out = forward(lq, **kw)
        return out * float("nan") if torch.is_autocast_enabled("cpu") else out

    monkeypatch.setattr(system.generator, "forward", overflowing)
    writer = PredictWriter(output_dir=str(tmp_path / "o"), color_fix="none")
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False, callbacks=[writer],
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(system, datamodule=SRDataModule(predict_input=str(src / "astronaut.png"), num_workers=0),
                    return_predictions=False)
    assert any("again in fp32" in n for n in writer.notes)
    out = np.asarray(Image.open(tmp_path / "o" / "astronaut.png"))
    assert out.shape == (256, 256, 3) and out.std() > 5  # a real image, not black
