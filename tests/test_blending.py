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


class Recorder(nn.Module):
    """An identity 'face model' that keeps what it was given."""

    scale = 1

    def forward(self, x):
        self.seen = x.clone()
        return x


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
    hard = BlendingBaseline(Bicubic(1), Tint(), face_size=256, feather=0.0, detect=False, alignment="headsup")
    soft = BlendingBaseline(Bicubic(1), Tint(), face_size=256, feather=0.15, detect=False, alignment="headsup")
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


def test_facexlib_alignment_is_opencvs_similarity_and_fills_gray():
    """The least-squares similarity equals OpenCV's estimateAffinePartial2D (LMEDS, as facexlib calls it);
    outside the photo the aligned crop has facexlib's gray."""
    import cv2

    from headsup.data.faces import align_faces, similarity_transform, template
    from headsup.inference.blending import FACEXLIB_GRAY

    assert FACEXLIB_GRAY == (132 / 255, 133 / 255, 135 / 255)  # facexlib's BGR (135, 133, 132) as RGB
    points = template(512)
    ours = similarity_transform(LANDMARKS[None], points[None])[0].numpy()
    opencv = cv2.estimateAffinePartial2D(LANDMARKS.numpy(), points.numpy(), method=cv2.LMEDS)[0]
    assert abs(ours - opencv).max() < 1e-4
    corner = torch.tensor([[4.0, 6.0], [30.0, 6.0], [17.0, 20.0], [7.0, 30.0], [28.0, 30.0]])  # a face at the edge
    face_model = Recorder()
    valid = torch.ones(1, 1, dtype=torch.bool)
    BlendingBaseline(Bicubic(1), face_model, face_size=256, detect=False)(_image()[..., :128, :128], corner[None, None],
                                                                          valid)
    assert torch.allclose(face_model.seen[0, :, 2, 2] * 255, torch.tensor([132.0, 133.0, 135.0]), atol=1e-4)
    mirrored = align_faces(_image()[..., :128, :128], corner[None], 256)  # the "headsup" alignment's crop
    assert not torch.allclose(mirrored[0, :, 2, 2], torch.tensor(FACEXLIB_GRAY), atol=1e-2)


def test_facexlib_paste_mask_equals_opencv():
    """facexlib's soft mask (erode 2s, erode 2 w_edge, Gaussian 2 w_edge + 1 with OpenCV's sigma),
    recomputed with OpenCV on the same warped-back square."""
    import cv2
    import numpy as np

    from headsup.inference.blending import facexlib_masks
    from headsup.models.reference import warp_reference

    scale = 2
    inside = warp_reference(torch.ones(1, 1, 512, 512), LANDMARKS[None] * scale, 1024, 1024)
    face = torch.rand(1, 3, 1024, 1024)
    masks, faces = facexlib_masks(inside, scale, face)
    square = inside[0, 0].numpy()
    eroded = cv2.erode(square, np.ones((2 * scale, 2 * scale), np.uint8))
    w_edge = int(eroded.sum() ** 0.5) // 20
    core = cv2.erode(eroded, np.ones((2 * w_edge, 2 * w_edge), np.uint8))
    soft = cv2.GaussianBlur(core, (2 * w_edge + 1, 2 * w_edge + 1), 0)
    assert w_edge > 5 and abs(masks[0, 0].numpy() - soft).max() < 1e-5
    assert torch.allclose(faces, face * torch.from_numpy(eroded))


def test_facexlib_paste_erodes_by_the_output_scale(monkeypatch):
    """The paste mask's first erosion is 2 x the background's scale (facexlib's upscale factor)."""
    import headsup.inference.blending as blending

    seen = []
    original = blending.facexlib_masks
    monkeypatch.setattr(blending, "facexlib_masks", lambda inside, scale, faces: (seen.append(scale),
                                                                                  original(inside, scale, faces))[1])
    lq = torch.nn.functional.interpolate(_image(), scale_factor=0.25, mode="area")
    BlendingBaseline(Bicubic(4), Recorder(), face_size=256, detect=False)(lq, LANDMARKS[None, None],
                                                                         torch.ones(1, 1, dtype=torch.bool))
    assert seen == [4]
