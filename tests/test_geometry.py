"""Face boxes and landmarks stay on the same pixels through crop, flip and resize."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headsup.data import geometry as G


def _image_with_marks(h: int, w: int, points: torch.Tensor) -> torch.Tensor:
    img = torch.zeros(1, 5, h, w)
    for i, (x, y) in enumerate(points.tolist()):
        img[0, i, int(y), int(x)] = 1.0  # channel i marks landmark i
    return img


def _marks(img: torch.Tensor) -> torch.Tensor:
    out = []
    for c in range(img.shape[1]):
        idx = int(img[0, c].flatten().argmax())
        w = img.shape[-1]
        out.append([idx % w + 0.5, idx // w + 0.5])
    return torch.tensor(out)


def test_crop_and_flip_keep_landmarks_on_their_pixels():
    lm = torch.tensor([[[30.5, 40.5], [50.5, 41.5], [40.5, 52.5], [33.5, 62.5], [48.5, 63.5]]])
    boxes = torch.tensor([[20.0, 25.0, 60.0, 75.0]])
    img = _image_with_marks(100, 120, lm[0])
    top, left, h, w = 10, 15, 64, 64
    b2, lm2, keep = G.crop(boxes, lm, top, left, h, w)
    assert keep.all()
    assert torch.allclose(_marks(img[..., top : top + h, left : left + w]), lm2[0])
    b3, lm3 = G.hflip(b2, lm2, w)
    flipped = img[..., top : top + h, left : left + w].flip(-1)
    marks = _marks(flipped)
    # the flip swaps the eye and mouth-corner roles, the positions follow the pixels
    assert torch.allclose(marks[[1, 0, 2, 4, 3]], lm3[0])
    assert lm3[0, 0, 0] < lm3[0, 1, 0]  # left eye (in the image) is still left of the right eye
    assert torch.allclose(b3, torch.tensor([[w - (60.0 - left), 25.0 - top, w - (20.0 - left), 64.0]]))


def test_resize_maps_box_contents():
    img = torch.zeros(1, 1, 64, 96)
    img[..., 16:32, 40:72] = 1.0
    boxes = torch.tensor([[40.0, 16.0, 72.0, 32.0]])
    small = F.interpolate(img, scale_factor=0.25, mode="area")
    b, _ = G.resize(boxes, torch.zeros(1, 5, 2), 0.25, 0.25)
    x1, y1, x2, y2 = b[0].int().tolist()
    assert (small[0, 0, y1:y2, x1:x2] == 1).all() and small.sum() == (x2 - x1) * (y2 - y1)


def test_crop_drops_faces_mostly_outside():
    boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0], [50.0, 50.0, 90.0, 90.0]])
    _, _, keep = G.crop(boxes, torch.zeros(2, 5, 2), 40, 40, 60, 60)
    assert keep.tolist() == [False, True]
