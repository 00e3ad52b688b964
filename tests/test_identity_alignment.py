"""Faces reach the recognition net as facenet's nets were trained: the MTCNN box plus a margin.

The crop is checked against facenet-pytorch's own `extract_face` on real photos. Whether this
alignment separates people better than the FFHQ template needs the real VGGFace2 weights: with
random InceptionResnetV1 weights every cosine between these photos is 1.0000 +- 1e-4 with either
alignment (measured), so the comparison runs under `-m weights` with HEADSUP_FACENET_WEIGHTS set.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

from headsup.data.faces import FaceAnnotator, align_faces, box_from_landmarks, facenet_boxes, facenet_crops


def _grace_hopper() -> np.ndarray:
    matplotlib = pytest.importorskip("matplotlib")  # a dev dependency; ships the photo
    path = Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg"
    return np.asarray(Image.open(path).convert("RGB"))


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a)).permute(2, 0, 1).float() / 255


@pytest.fixture(scope="module")
def photos():
    """Two people, each as the photo, its mirror image and an off-centre crop, with MTCNN's face."""
    annotator = FaceAnnotator(device="cpu")
    out = {}
    for name, image in (("astronaut", astronaut()), ("hopper", _grace_hopper())):
        h, w = image.shape[:2]
        for variant, a in (("", image), ("flip", image[:, ::-1]), ("crop", image[h // 16 :, w // 10 : w - w // 20])):
            x = _tensor(a)
            faces = annotator.detect([x])[0]
            assert faces, f"MTCNN finds the face in {name} {variant}"
            out[(name, variant)] = (x, faces[0])
    return out


def _box(face) -> torch.Tensor:
    return torch.tensor(face.box, dtype=torch.float32)[None]


def test_facenet_crop_equals_facenet_pytorchs_extract_face(photos):
    from facenet_pytorch.models.utils.detect_face import extract_face

    for name in ("astronaut", "hopper"):  # the astronaut's face is upsampled to 160 px, Hopper's downsampled
        x, face = photos[(name, "")]
        ours = facenet_crops(x[None], _box(face), 160, 32)[0] * 255
        pil = Image.fromarray((x.permute(1, 2, 0) * 255).round().byte().numpy())
        theirs = extract_face(pil, np.array(face.box), image_size=160, margin=32)  # float, 0..255
        diff = (ours - theirs).abs()
        assert diff.max() <= 1.0 and diff.mean() < 0.4, (name, diff.max(), diff.mean())  # Pillow rounds to 8 bits


def test_facenet_box_grows_by_the_margin_in_output_pixels():
    x1, y1, x2, y2 = facenet_boxes(torch.tensor([[100.0, 50.0, 228.0, 210.0]]), 400, 400, 160, 32)[0]
    assert (x1, y1, x2, y2) == (84, 30, 244, 230)  # 128 px wide + 32/128 of it; 160 tall + 40
    assert facenet_boxes(torch.tensor([[5.0, 5.0, 133.0, 133.0]]), 120, 120)[0] == (0, 0, 120, 120)  # clipped


def test_crop_gradient_reaches_only_the_box_and_margin(photos):
    x, face = photos[("astronaut", "")]
    x = x[None].clone().requires_grad_(True)
    facenet_crops(x, _box(face)).sum().backward()
    x1, y1, x2, y2 = facenet_boxes(_box(face), *x.shape[-2:])[0]
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[..., y1:y2, x1:x2] = True
    assert x.grad[inside].abs().min() > 0 and x.grad[~inside].abs().max() == 0


def test_box_from_landmarks_stands_in_for_mtcnns_box(photos):
    """References are FFHQ-aligned crops without a detection: their box comes from the landmarks
    (fitted on the astronaut); it must fit another person's MTCNN box too."""
    for key, (_, face) in photos.items():
        guess = box_from_landmarks(torch.tensor(face.landmarks, dtype=torch.float32)[None])[0]
        box = torch.tensor(face.box)
        lo, hi = torch.maximum(guess[:2], box[:2]), torch.minimum(guess[2:], box[2:])
        inter = (hi - lo).clamp_min(0).prod()
        iou = inter / ((guess[2:] - guess[:2]).prod() + (box[2:] - box[:2]).prod() - inter)
        assert iou > 0.85, (key, iou)


def test_identity_net_crops_as_facenet_by_default(photos, tiny_weights):
    from headsup.models.identity import IdentityNet

    x, face = photos[("hopper", "")]
    landmarks = torch.tensor(face.landmarks, dtype=torch.float32)[None]
    default = IdentityNet(str(tiny_weights["facenet"]))
    torch.testing.assert_close(default.crops(x[None], landmarks, _box(face)), facenet_crops(x[None], _box(face)))
    without_box = default.crops(x[None], landmarks)  # e.g. a reference: the box from its landmarks
    torch.testing.assert_close(without_box, facenet_crops(x[None], box_from_landmarks(landmarks)))
    ffhq = IdentityNet(str(tiny_weights["facenet"]), alignment="ffhq")
    torch.testing.assert_close(ffhq.crops(x[None], landmarks, _box(face)), align_faces(x[None], landmarks, 160))
    with pytest.raises(ValueError, match="alignment"):
        IdentityNet(str(tiny_weights["facenet"]), alignment="arcface")


def _gap(net, photos) -> float:
    """Smallest same-person cosine minus the largest different-person cosine."""
    keys = sorted(photos)
    emb = {k: net(photos[k][0][None], torch.tensor(photos[k][1].landmarks, dtype=torch.float32)[None],
                  _box(photos[k][1]))[0] for k in keys}
    pairs = [(a, b) for i, a in enumerate(keys) for b in keys[i + 1 :]]
    same = [float(emb[a] @ emb[b]) for a, b in pairs if a[0] == b[0]]
    other = [float(emb[a] @ emb[b]) for a, b in pairs if a[0] != b[0]]
    return min(same) - max(other)


@pytest.mark.weights
def test_facenet_alignment_separates_people_at_least_as_well_as_the_template(photos):
    weights = os.environ.get("HEADSUP_FACENET_WEIGHTS")
    if not weights:
        pytest.skip("set HEADSUP_FACENET_WEIGHTS to facenet-pytorch's VGGFace2 InceptionResnetV1 state dict")
    from headsup.models.identity import IdentityNet

    with torch.no_grad():
        facenet = _gap(IdentityNet(weights), photos)
        template = _gap(IdentityNet(weights, alignment="ffhq"), photos)
    assert facenet > 0 and facenet >= template, (facenet, template)
