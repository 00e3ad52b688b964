"""Reference conditioning: zero-initialised widened conv_in, reference dropout, warping, gradients."""

from __future__ import annotations

import pytest
import torch
from skimage.data import astronaut

from headsup.data.faces import align_faces, soft_face_mask
from headsup.models.generator import OneStepSR
from headsup.models.reference import warp_reference
from headsup.testing.tiny import TinySD

LANDMARKS = torch.tensor([[205.01, 101.73], [246.76, 103.71], [224.67, 128.96], [201.72, 139.25], [245.27, 141.86]])


def _inputs(n: int = 2):
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    hq = img[None, :, 40:296, 120:376].repeat(n, 1, 1, 1)  # 256 px crop holding the face
    landmarks = (LANDMARKS - torch.tensor([120.0, 40.0]))[None].repeat(n, 1, 1)
    reference = align_faces(img[None], LANDMARKS[None], 64).repeat(n, 1, 1, 1)
    boxes = torch.tensor([[[61.0, 22.0, 148.0, 132.0]]]).repeat(n, 1, 1)
    mask = soft_face_mask(boxes, torch.ones(n, 1, dtype=torch.bool), 256, 256)
    lq = torch.nn.functional.interpolate(hq, scale_factor=0.25, mode="area")
    return dict(lq=lq, reference=reference, landmarks=landmarks, face_mask=mask,
                has_reference=torch.ones(n, dtype=torch.bool))


def _pair():
    torch.manual_seed(0)
    plain = OneStepSR(TinySD()).eval()
    torch.manual_seed(0)
    widened = OneStepSR(TinySD(), reference=True).eval()
    return plain, widened


def test_zero_initialised_channels_leave_the_output_unchanged():
    plain, widened = _pair()
    assert widened.unet.conv_in.get_base_layer().in_channels == 9 and widened.unet.config.in_channels == 9
    x = _inputs()
    with torch.no_grad():
        before = plain(x["lq"])
        assert torch.equal(widened(x["lq"]), before)  # no reference at all
        assert torch.allclose(widened(**x), before, atol=1e-6)  # reference and mask given
        # once the new channels have weights, the reference changes the result
        widened.unet.conv_in.weight[:, 4:].normal_(0, 0.1)
        assert not torch.allclose(widened(**x), widened(x["lq"]), atol=1e-3)


def test_reference_dropout_rate():
    _, widened = _pair()
    widened.train()
    torch.manual_seed(1)
    kept = widened.keep_reference(torch.ones(40000, dtype=torch.bool)).float().mean()
    assert abs(float(kept) - 0.8) < 0.01  # p = 0.2
    has = torch.tensor([True, False] * 10)
    assert not widened.keep_reference(has)[~has].any()  # nothing is invented where no reference exists
    widened.eval()
    assert widened.keep_reference(has).equal(has)  # no dropout at inference
    with pytest.raises(ValueError, match="reference_dropout"):
        OneStepSR(TinySD(), reference=True, reference_dropout=1.5)


def test_each_rank_draws_its_own_reference_dropout_and_objective_noise(monkeypatch):
    """Lightning seeds every rank alike; SRSystem.on_fit_start gives each rank its own draws."""
    from headsup.models.teacher import TeacherWithFakeScore
    from headsup.objectives.vsd import VSDLoss
    from headsup.system import SRSystem

    system = SRSystem(OneStepSR(TinySD(), reference=True), {"vsd": VSDLoss(TeacherWithFakeScore())})
    system.generator.train()
    masks, noise = {}, {}
    for rank in (0, 1, 0):
        monkeypatch.setattr(SRSystem, "global_rank", property(lambda self, r=rank: r))
        torch.manual_seed(0)  # as seed_everything does on every rank
        system.on_fit_start()
        mask = system.generator.keep_reference(torch.ones(256, dtype=torch.bool))
        draw = torch.rand(8, generator=system.objectives["vsd"].rng("cpu"))
        if rank in masks:  # the same rank draws the same again
            assert mask.equal(masks[rank]) and draw.equal(noise[rank])
        masks[rank], noise[rank] = mask, draw
    assert not masks[0].equal(masks[1]) and not noise[0].equal(noise[1])


def test_warped_reference_lands_on_the_face():
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    aligned = align_faces(img[None], LANDMARKS[None], 256)
    back = warp_reference(aligned, LANDMARKS[None], 512, 512)[0]
    face = (slice(None), slice(90, 150), slice(195, 255))  # eyes to mouth
    assert (back[face] - img[face]).abs().mean() < 0.03
    assert back[:, 260:].abs().sum() == 0 and back[:, :, :100].abs().sum() == 0  # nothing away from the face


def test_gradients_reach_the_new_channels_through_the_reference():
    _, widened = _pair()
    widened.train()
    widened.reference_dropout = 0.0
    with torch.no_grad():
        widened.unet.conv_in.weight[:, 4:].normal_(0, 0.1)
    widened.zero_grad(set_to_none=True)
    widened(**_inputs()).mean().backward()
    grad = widened.unet.conv_in.weight.grad
    assert grad[:, 4:8].abs().sum() > 0 and grad[:, 8].abs().sum() > 0  # reference latent and mask channels
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in widened.named_parameters()
               if n.startswith("vae.encoder.") and "lora_" in n)
