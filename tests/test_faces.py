"""Face annotation, manifests, alignment and masks on real photos (scikit-image's astronaut)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut, coffee

from headsup.data import faces as Fc

ASTRONAUT_BOX = (181, 62, 268, 172)  # MTCNN on the full-size photo (shared/ENVIRONMENT.md)


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        return np.asarray(Image.open(handle).convert("RGB"))


@pytest.fixture(scope="module")
def annotator():
    return Fc.FaceAnnotator(device="cpu")


@pytest.fixture(scope="module")
def photo_tree(tmp_path_factory):
    """Two people in their own folders, odd formats, a corrupt file and a photo without a face."""
    root = tmp_path_factory.mktemp("photos")
    for d in ("astro", "hopper", "misc"):
        (root / d).mkdir()
    a = astronaut()
    Image.fromarray(a).save(root / "astro" / "a.png")
    Image.fromarray(a[:, ::-1].copy()).save(root / "astro" / "a_flip.jpg", quality=95)
    # stored rotated by 90 degrees with an EXIF orientation that turns it upright again
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.rot90(a, 1).copy()).save(root / "astro" / "a_exif.jpg", quality=95, exif=exif)
    g = _grace_hopper()
    Image.fromarray(g).save(root / "hopper" / "h.png")
    Image.fromarray(g).convert("L").save(root / "hopper" / "h_gray.png")
    Image.fromarray(np.dstack([a, np.full(a.shape[:2], 200, np.uint8)])).save(root / "misc" / "rgba.png")
    import cv2

    cv2.imwrite(str(root / "misc" / "deep.png"), (a[..., ::-1].astype(np.uint16) * 257))
    (root / "misc" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    Image.fromarray(coffee()).save(root / "misc" / "coffee.png")
    return root


def test_detection_finds_the_astronaut_with_landmarks_on_the_eyes(annotator):
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    (face,) = annotator.detect([img])[0]
    assert face.prob > 0.99
    assert all(abs(a - b) < 4 for a, b in zip(face.box, ASTRONAUT_BOX))
    (lx, ly), (rx, ry) = face.landmarks[:2]
    x1, y1, x2, y2 = face.box
    assert x1 < lx < (x1 + x2) / 2 < rx < x2  # image-left eye first
    assert y1 < ly < (y1 + y2) / 2 and y1 < ry < (y1 + y2) / 2  # eyes in the upper half of the box
    assert face.eye_distance == pytest.approx(math.hypot(rx - lx, ry - ly), abs=1e-2)


def test_detection_on_a_shrunk_copy_maps_back_to_the_original(annotator):
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    big = torch.nn.functional.interpolate(img[None], scale_factor=2, mode="bilinear")[0]
    small = Fc.FaceAnnotator(device="cpu", detect_size=512)
    (face,) = small.detect([big])[0]  # detected at 512, reported at 1024
    assert all(abs(a - 2 * b) < 8 for a, b in zip(face.box, ASTRONAUT_BOX))


def test_annotate_reads_odd_files_records_errors_and_resumes(photo_tree, annotator, monkeypatch):
    manifest = Fc.annotate(photo_tree, annotator=annotator, batch_size=3, num_workers=0, progress=False)
    records = {r["path"]: r for r in Fc.read_manifest(manifest)}
    assert len(records) == 9
    broken = records["misc/broken.jpg"]
    assert "broken.jpg" in broken["error"] and broken["faces"] == []
    assert records["misc/coffee.png"]["faces"] == [] and records["misc/coffee.png"]["error"] is None
    for path in ("astro/a.png", "astro/a_exif.jpg", "misc/rgba.png", "misc/deep.png"):
        (face, *_) = records[path]["faces"]
        assert all(abs(a - b) < 4 for a, b in zip(face["box"], ASTRONAUT_BOX)), path
        assert (records[path]["width"], records[path]["height"]) == (512, 512)
    flipped = records["astro/a_flip.jpg"]["faces"][0]["box"]
    assert abs(flipped[0] - (512 - ASTRONAUT_BOX[2])) < 4
    assert records["hopper/h.png"]["faces"] and records["hopper/h_gray.png"]["faces"]
    assert FaceRecord_roundtrip(records["astro/a.png"])

    calls = []

    def counting_detect(images, scales=None):
        calls.append(len(images))
        return [[] for _ in images]

    monkeypatch.setattr(annotator, "detect", counting_detect)
    Fc.annotate(photo_tree, annotator=annotator, num_workers=0, progress=False)
    assert calls == []  # nothing is detected again
    Image.fromarray(astronaut()).save(photo_tree / "astro" / "new.png")
    text = manifest.read_text()
    manifest.write_text(text + '{"path": "astro/half-written", "wid')  # a run killed mid-line
    Fc.annotate(photo_tree, annotator=annotator, num_workers=0, progress=False)
    assert calls == [1]
    after = Fc.read_manifest(manifest)
    assert len(after) == 10 and [r["path"] for r in after[:9]] == list(records)
    (photo_tree / "astro" / "new.png").unlink()


def FaceRecord_roundtrip(record: dict) -> bool:
    again = json.loads(Fc.FaceRecord.from_dict(record).to_json())
    return again == record


def test_malformed_manifest_line_names_the_file(tmp_path):
    bad = tmp_path / "faces.jsonl"
    bad.write_text('{"path": "a.png"}\nnot json\n{"path": "b.png"}\n')
    with pytest.raises(ValueError, match=r"faces.jsonl, line 2"):
        Fc.read_manifest(bad)
    with pytest.raises(FileNotFoundError, match="manifest not found"):
        Fc.read_manifest(tmp_path / "missing.jsonl")


def test_similarity_transform_recovers_a_known_transform():
    gen = torch.Generator().manual_seed(0)
    src = torch.rand(3, 5, 2, generator=gen) * 200
    angle, scale = 0.4, 1.7
    rot = scale * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    dst = src @ rot.T + torch.tensor([12.0, -7.0])
    m = Fc.similarity_transform(src, dst)
    assert torch.allclose(m[:, :, :2], rot.expand(3, 2, 2), atol=1e-4)
    assert torch.allclose(m[:, :, 2], torch.tensor([12.0, -7.0]).expand(3, 2), atol=1e-3)


def _blobs(points: torch.Tensor, size: int) -> torch.Tensor:
    """An image with a small Gaussian spot on each point (continuous pixel coordinates)."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    img = sum(torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2)) for x, y in points.tolist())
    return img.expand(3, -1, -1).clone()


def test_alignment_puts_the_landmarks_on_the_template_within_2px():
    # landmarks of a rotated, smaller face somewhere in a 300 px image
    tpl = Fc.template(512)
    angle = 0.35
    rot = 0.3 * torch.tensor([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    points = (tpl - 256) @ rot.T + torch.tensor([140.0, 160.0])
    aligned = Fc.align_faces(_blobs(points, 300)[None], points[None], 512)[0, 0]
    for x, y in tpl.tolist():
        x0, y0 = int(x) - 12, int(y) - 12
        patch = aligned[y0 : y0 + 25, x0 : x0 + 25]
        w = patch / patch.sum()
        yy, xx = torch.meshgrid(torch.arange(25) + 0.5 + y0, torch.arange(25) + 0.5 + x0, indexing="ij")
        cx, cy = float((w * xx).sum()), float((w * yy).sum())
        assert math.hypot(cx - x, cy - y) < 2.0, (x, y, cx, cy)


def test_aligned_astronaut_is_detected_near_the_template(annotator):
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    (face,) = annotator.detect([img])[0]
    aligned = Fc.align_faces(img[None], torch.tensor(face.landmarks)[None], 512)
    (again,) = annotator.detect([aligned[0]])[0]
    # MTCNN's own landmark noise is about 1 px on the 42 px eye distance, x5 after alignment
    eyes = torch.tensor(again.landmarks[:2]) - Fc.template(512)[:2]
    assert eyes.norm(dim=1).max() < 8


def test_soft_face_mask():
    boxes = torch.tensor([[[10.0, 10.0, 30.0, 50.0], [0.0, 0.0, 5.0, 5.0]]])
    mask = Fc.soft_face_mask(boxes, torch.tensor([[True, False]]), 64, 64)
    assert mask.shape == (1, 1, 64, 64)
    assert mask[0, 0, 30, 20] > 0.99 and mask[0, 0, 2, 2] < 1e-3  # the invalid face is ignored
    assert mask[0, 0, 30, 45] < 1e-3 and 0.3 < mask[0, 0, 30, 10] < 0.7  # soft edge on the box
    empty = Fc.soft_face_mask(torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.bool), 8, 8)
    assert empty.shape == (2, 1, 8, 8) and empty.sum() == 0


def test_prepare_commands_end_to_end(photo_tree, tmp_path, capsys):
    from headsup.tools import main

    manifest = tmp_path / "faces.jsonl"
    assert main(["prepare", "faces", str(photo_tree), "--manifest", str(manifest), "--workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "9 images" in out and "1 unreadable" in out
    assert main(["prepare", "references", str(manifest)]) == 2
    assert "--weights" in capsys.readouterr().err
    assert main(["prepare", "references", str(manifest), "--from-folders"]) == 0
    refs = {r["path"]: r for r in Fc.read_manifest(tmp_path / "references.jsonl")}
    assert refs["astro/a.png"]["references"] == ["astro/a_exif.jpg", "astro/a_flip.jpg"]
    assert "misc/broken.jpg" not in refs and "misc/coffee.png" not in refs  # no face, no identity
    args = ["prepare", "portrait-set", str(manifest), "--out", str(tmp_path / "set"), "--references",
            str(tmp_path / "references.jsonl"), "--min-long-side", "400", "--min-short-side", "400",
            "--min-eye-distance", "30", "--test-fraction", "0.3"]
    assert main(args) == 0
    out = capsys.readouterr().out
    train = Fc.read_manifest(tmp_path / "set" / "train.jsonl")
    test = Fc.read_manifest(tmp_path / "set" / "test.jsonl")
    assert len(train) + len(test) >= 5 and "rejected" in out
    assert not {r["identity"] for r in train} & {r["identity"] for r in test}
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err  # the set is kept
    assert Fc.read_manifest(tmp_path / "set" / "train.jsonl") == train
