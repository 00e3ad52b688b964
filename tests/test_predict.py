"""`predict` with face-aware models: detected faces, per-image references, notes; skip-existing."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from headsup.callbacks.predict_writer import PredictWriter
from headsup.data.datamodule import SRDataModule
from headsup.degradations import BicubicDegradation
from headsup.models.generator import OneStepSR
from headsup.system import SRSystem
from headsup.testing.tiny import TinySD


def _predict(system, inputs, out, reference=None, **writer):
    writer = PredictWriter(output_dir=str(out), color_fix="none", **writer)
    dm = SRDataModule(predict_input=str(inputs), predict_reference=str(reference) if reference else None,
                      num_workers=0, degradation=BicubicDegradation(scale=system.generator.scale))
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


# ---------------------------------------------------------------------------- reports
def _tiny_photo(path, seed=0, size=(24, 16)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_unreadable_files_are_named_in_the_summary(tmp_path, capsys):
    src = tmp_path / "in"
    _tiny_photo(src / "good.png")
    _tiny_photo(src / "sub" / "fine.png", seed=1)
    (src / "broken.png").write_bytes(b"not an image")
    (src / "empty.jpg").write_bytes(b"")
    png = (src / "good.png").read_bytes()
    (src / "sub" / "cut.png").write_bytes(png[: len(png) // 2])  # truncated
    writer = _predict(SRSystem(generator=OneStepSR(TinySD()).eval()), src, tmp_path / "out")
    summary = capsys.readouterr().out
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in writer.written) == ["good.png", "sub/fine.png"]
    bad = [src / "broken.png", src / "empty.jpg", src / "sub" / "cut.png"]
    assert len(writer.failed) == 3
    for path in bad:  # one entry and one summary line per unreadable file, naming it
        assert sum(str(path) in line for line in writer.failed) == 1
        assert sum(str(path) in line for line in summary.splitlines()) == 1
    assert "2 written" in summary and "3 unreadable:" in summary
    assert not (tmp_path / "out" / "broken.png").exists()


def test_rerun_redoes_only_the_failed_file(tmp_path):
    src, out = tmp_path / "in", tmp_path / "out"
    _tiny_photo(src / "a.png")
    _tiny_photo(src / "sub" / "b.png", seed=1)
    (src / "c.png").write_bytes(b"garbage")
    system = SRSystem(generator=OneStepSR(TinySD()).eval())
    first = _predict(system, src, out)
    assert len(first.failed) == 1 and str(src / "c.png") in first.failed[0]
    stamps = {p: p.stat().st_mtime_ns for p in first.written}
    assert len(stamps) == 2
    _tiny_photo(src / "c.png", seed=2)  # the file is fixed
    second = _predict(system, src, out)
    assert [p.name for p in second.written] == ["c.png"] and not second.failed
    assert sorted(p.name for p in second.skipped) == ["a.png", "b.png"]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # the good outputs were not written again


def test_prepare_faces_retry_errors_redoes_only_the_failed_files(samples_dir, tmp_path, monkeypatch):
    from headsup.data.faces import FaceAnnotator, read_manifest
    from headsup.tools import main as tools

    root = tmp_path / "photos"
    root.mkdir()
    Image.open(samples_dir / "portrait" / "grace_hopper" / "grace_hopper.png").save(root / "good.png")
    (root / "late.png").write_bytes(b"not yet an image")
    args = ["prepare", "faces", str(root), "--workers", "0", "--device", "cpu"]
    assert tools(args) == 0
    first = {r["path"]: r for r in read_manifest(root / "faces.jsonl")}
    assert first["good.png"]["faces"] and "late.png" in first["late.png"]["error"]
    Image.open(samples_dir / "portrait" / "astronaut" / "astronaut.png").save(root / "late.png")
    seen = []
    detect = FaceAnnotator.detect
    monkeypatch.setattr(FaceAnnotator, "detect", lambda self, images, scales=None: seen.append(len(images))
                        or detect(self, images, scales))
    assert tools(args) == 0  # without the flag a recorded error stays
    assert read_manifest(root / "faces.jsonl")[1]["error"] and not seen
    assert tools(args + ["--retry-errors"]) == 0
    again = {r["path"]: r for r in read_manifest(root / "faces.jsonl")}
    assert seen == [1]  # only the fixed file was detected again
    assert again["good.png"] == first["good.png"]
    assert again["late.png"]["error"] is None and len(again["late.png"]["faces"]) == 1


def _conditioning_spy(system, monkeypatch) -> list[dict]:
    calls = []
    forward = system.generator.forward
    monkeypatch.setattr(system.generator, "forward", lambda lq, **kw: calls.append(kw) or forward(lq, **kw))
    return calls


def test_reference_goes_to_the_largest_face(samples_dir, tmp_path, monkeypatch):
    from skimage.data import astronaut

    head = Image.fromarray(astronaut()[20:230, 120:330])  # the face with some margin
    canvas = Image.new("RGB", (256, 160), (90, 90, 90))
    canvas.paste(head.resize((56, 56), Image.Resampling.LANCZOS), (20, 60))  # the small face first (left)
    canvas.paste(head.resize((150, 150), Image.Resampling.LANCZOS), (100, 5))
    src = tmp_path / "in"
    src.mkdir()
    canvas.save(src / "two.png")
    from facenet_pytorch import MTCNN

    detect = MTCNN.detect

    def smallest_first(self, imgs, landmarks=False):  # whatever MTCNN's own order, the small face comes first
        boxes, probs, points = detect(self, imgs, landmarks=landmarks)
        if any(b is None for b in boxes):
            return boxes, probs, points
        order = [np.argsort(b[:, 2] - b[:, 0]) for b in boxes]
        return tuple([a[o] for a, o in zip(arr, order)] for arr in (boxes, probs, points))

    monkeypatch.setattr(MTCNN, "detect", smallest_first)
    torch.manual_seed(0)
    system = SRSystem(generator=OneStepSR(TinySD(), reference=True, scale=1).eval())
    calls = _conditioning_spy(system, monkeypatch)
    ref = samples_dir / "portrait" / "astronaut" / "astronaut_mirrored.png"
    writer = _predict(system, src, tmp_path / "out", ref)
    assert len(writer.referenced) == 1 and len(calls) == 1
    cond = calls[0]
    mask = cond["face_mask"][0, 0]
    assert mask[60 + 28, 20 + 28] > 0.5 and mask[5 + 75, 100 + 75] > 0.5  # both faces were found
    points = cond["landmarks"][0]  # the face the reference is warped onto
    assert bool(cond["has_reference"][0])
    assert ((points[:, 0] > 100) & (points[:, 0] < 250) & (points[:, 1] > 5) & (points[:, 1] < 155)).all()


def test_reference_folder_matches_by_relative_path(inputs, reference_system, tmp_path):
    src_photos, refs_src = inputs
    src, refs = tmp_path / "in", tmp_path / "refs"
    for sub in ("a", "b"):  # the same file name in two folders
        (src / sub).mkdir(parents=True)
        (src / sub / "x.png").write_bytes((src_photos / "astronaut.png").read_bytes())
    (refs / "a").mkdir(parents=True)
    (refs / "b").mkdir()
    Image.open(refs_src / "astronaut.jpg").save(refs / "a" / "x.png")
    Image.fromarray(np.full((64, 64, 3), 127, np.uint8)).save(refs / "b" / "x.png")  # no face in it
    writer = _predict(reference_system, src, tmp_path / "out", refs)
    assert [p.relative_to(tmp_path / "out").as_posix() for p in writer.referenced] == ["a/x.png"]
    assert writer.notes == [f"{src / 'b' / 'x.png'}: no face found in the reference {refs / 'b' / 'x.png'}: not used"]


# ---------------------------------------------------------------------------- bf16 callers
def _astronaut() -> torch.Tensor:
    from skimage.data import astronaut

    return torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255


def test_detection_ignores_the_callers_bf16_autocast():
    from headsup.data.faces import FaceAnnotator

    annotator = FaceAnnotator(device="cpu")
    image = _astronaut()
    plain = annotator.detect([image])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # facenet's numpy NMS has no bfloat16
        mixed = annotator.detect([image.bfloat16()])
    assert len(plain[0]) == 1 and mixed == plain


def test_predict_face_fields_are_computed_in_fp32_under_autocast():
    from headsup.inference.faces import PredictFaces

    image = _astronaut()[None]
    lq = torch.nn.functional.interpolate(image, scale_factor=0.125, mode="area")
    faces = PredictFaces(reference_size=128)
    plain, _ = faces(lq, 4, image)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed, _ = faces(lq, 4, image)
    assert plain["has_reference"].item() and set(mixed) == set(plain)
    for key, value in plain.items():  # the aligned reference moves by up to 0.5 in bf16
        assert mixed[key].dtype == value.dtype and torch.equal(mixed[key], value), key


# ---------------------------------------------------------------------------- colour fix and overwrite
def test_alpha_is_never_colour_corrected(tmp_path):
    """The colour fix (adain, wavelet) changes the RGB only: the saved alpha is the plain upscaled alpha."""
    torch.manual_seed(0)
    lq = 0.5 + 0.5 * torch.rand(1, 3, 8, 8)  # a bright input under a dark output: the fix has work to do
    sr = 0.5 * torch.rand(1, 3, 32, 32)
    alpha = torch.linspace(0, 1, 32 * 32).view(1, 1, 32, 32) ** 2  # the system's upscaled alpha (B, 1, H, W)
    expected = (alpha[0, 0] * 255).round().numpy().astype(np.uint8)
    saved = {}
    for method in ("none", "adain", "wavelet"):
        writer = PredictWriter(output_dir=str(tmp_path / method), color_fix=method)
        prediction = {"sr": sr, "alpha": alpha, "path": str(tmp_path / "in.png"), "relpath": "in.png",
                      "grayscale": False, "bit_depth": 8}
        writer.write_on_batch_end(None, None, prediction, [0], {"lq": lq}, 0, 0)
        saved[method] = np.asarray(Image.open(tmp_path / method / "in.png"))
    for method in ("adain", "wavelet"):
        assert saved[method].shape == (32, 32, 4)
        assert np.abs(saved[method][..., :3].astype(int) - saved["none"][..., :3]).mean() > 20  # RGB corrected
        assert np.array_equal(saved[method][..., 3], expected)  # alpha untouched


def test_overwrite_replaces_an_existing_output(tmp_path):
    """An existing output is kept by default and replaced with `overwrite=True`."""
    src, out = tmp_path / "in", tmp_path / "out"
    _tiny_photo(src / "a.png")
    _tiny_photo(out / "a.png", seed=5, size=(8, 8))  # a stale output
    stale = (out / "a.png").read_bytes()
    system = SRSystem(generator=OneStepSR(TinySD()).eval())
    kept = _predict(system, src, out)
    assert not kept.written and (out / "a.png").read_bytes() == stale
    replaced = _predict(system, src, out, overwrite=True)
    assert [p.name for p in replaced.written] == ["a.png"] and not replaced.skipped
    assert Image.open(out / "a.png").size == (96, 64)  # the x4 output of the 24 x 16 input, not the stale file
