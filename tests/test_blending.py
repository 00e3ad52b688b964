"""Blending baseline (GFPGAN-style paste-back) and the seam score."""

from __future__ import annotations

import torch
from skimage.data import astronaut
from torch import nn

from headsup.inference.blending import Bicubic, BlendingBaseline
from headsup.metrics.seam import SeamScore, face_regions, seam_scores

LANDMARKS = torch.tensor([[205.01, 101.73], [246.76, 103.71], [224.67, 128.96], [201.72, 139.25], [245.27, 141.86]])


def _image():
    return (torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255)[None]


class Tint(nn.Module):
    """A 'face model' that changes the colour of whatever it is given (scale 1)."""

    scale = 1

    def forward(self, x):
        return (x * torch.tensor([1.0, 0.75, 0.75]).view(1, 3, 1, 1)).clamp(0, 1)


def test_identity_roles_give_back_the_input():
    img = _image()
    blend = BlendingBaseline(Bicubic(1), Bicubic(1), face_size=256, detect=False)
    out = blend(img, LANDMARKS[None, None], torch.ones(1, 1, dtype=torch.bool))
    region = face_regions(LANDMARKS[None], 512, 512)[0, 0] > 0
    outside = ~torch.nn.functional.max_pool2d(region[None, None].float(), 31, 1, 15)[0, 0].bool()
    assert torch.equal(out[0][:, outside], img[0][:, outside])  # untouched away from the face square
    assert (out - img).abs().mean() < 2e-3 and (out - img)[0][:, region].abs().mean() < 0.02  # warp round trip


def test_x4_roles_and_detection():
    img = _image()
    lq = torch.nn.functional.interpolate(img, scale_factor=0.25, mode="area")
    blend = BlendingBaseline(Bicubic(4), Tint(), face_size=256)
    given = blend(lq, LANDMARKS[None, None], torch.ones(1, 1, dtype=torch.bool))
    detected = blend(lq)  # MTCNN on the background SR finds the astronaut
    background = Bicubic(4)(lq)
    assert given.shape == detected.shape == (1, 3, 512, 512)
    for out in (given, detected):
        face = out[0, :, 100:140, 205:245]
        assert (face - background[0, :, 100:140, 205:245]).abs().mean() > 0.02  # the tinted face was pasted
    assert (given - detected).abs().mean() < 0.01  # detected landmarks are close to the given ones


def test_seam_score_is_zero_untouched_and_positive_for_hard_pastes():
    img = _image()
    lm = LANDMARKS[None]
    assert float(seam_scores(img, img, lm)) == 0.0
    hard = BlendingBaseline(Bicubic(1), Tint(), face_size=256, feather=0.0, detect=False)
    soft = BlendingBaseline(Bicubic(1), Tint(), face_size=256, feather=0.15, detect=False)
    valid = torch.ones(1, 1, dtype=torch.bool)
    s_hard = float(seam_scores(hard(img, lm[:, None], valid), img, lm))
    s_soft = float(seam_scores(soft(img, lm[:, None], valid), img, lm))
    assert s_hard > 0.3 and s_soft < s_hard
    blurred = torch.nn.functional.avg_pool2d(img, 3, 1, 1)  # blur everywhere: no seam
    assert abs(float(seam_scores(blurred, img, lm))) < 0.1
    metric = SeamScore()
    metric.update(hard(img, lm[:, None], valid), img, lm[:, None], valid)
    metric.update(img, img, lm[:, None], torch.zeros(1, 1, dtype=torch.bool))  # no face: nothing added
    assert float(metric.compute()) == s_hard
