"""Face MSE / LPIPS on differentiable face crops, and the identity loss with a frozen network."""

from __future__ import annotations

import pytest
import torch
from skimage.data import astronaut

from headsup.models.identity import IdentityNet
from headsup.objectives.base import StepContext
from headsup.objectives.face import FaceLPIPS, FaceMSE, face_crops
from headsup.objectives.identity import IdentityLoss

LANDMARKS = torch.tensor([[205.01, 101.73], [246.76, 103.71], [224.67, 128.96], [201.72, 139.25], [245.27, 141.86]])
BOX = torch.tensor([181.05, 62.16, 267.75, 172.05])


def _batch(n: int = 2, faces: bool = True) -> dict:
    valid = torch.zeros(n, 2, dtype=torch.bool)
    valid[:, 0] = faces
    return {"face_boxes": torch.stack([BOX, torch.zeros(4)])[None].repeat(n, 1, 1),
            "face_landmarks": torch.stack([LANDMARKS, torch.zeros(5, 2)])[None].repeat(n, 1, 1, 1),
            "face_valid": valid}


@pytest.fixture(scope="module")
def hq():
    return (torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255)[None].repeat(2, 1, 1, 1)


def test_face_crop_is_the_box_region():
    img = torch.rand(1, 3, 100, 120, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[[10.0, 20.0, 74.0, 84.0]]])
    crop = face_crops(img, boxes, torch.ones(1, 1, dtype=torch.bool), 64)
    # the same pixels: float error of the crop's homography only (up to ~2e-5 seen; a one-pixel shift is ~0.3)
    assert torch.allclose(crop[0], img[0, :, 20:84, 10:74], atol=1e-4)
    tall = torch.tensor([[[10.0, 20.0, 42.0, 84.0]]])  # 32x64 box -> the 64x64 square around it
    crop = face_crops(img, tall, torch.ones(1, 1, dtype=torch.bool), 64)
    assert torch.allclose(crop[0, :, :, 6:], img[0, :, 20:84, 0:58], atol=1e-3)  # x from -6: 6 columns outside
    assert crop[0, :, :, :6].abs().sum() == 0


def test_face_mse_looks_only_at_faces(hq):
    loss = FaceMSE()
    sr = hq.clone().requires_grad_(True)
    assert float(loss.generator_loss(StepContext(lq=hq, hq=hq, sr=sr, batch=_batch()))) == 0.0
    noisy = (hq + 0.1 * torch.randn_like(hq)).clamp(0, 1).requires_grad_(True)
    value = loss.generator_loss(StepContext(lq=hq, hq=hq, sr=noisy, batch=_batch()))
    assert float(value) > 1e-3
    value.backward()
    grad = noisy.grad.abs().sum(1)[0]
    assert grad[62:172, 181:267].sum() > 0
    assert grad[200:, :].sum() == 0 and grad[:, :150].sum() == 0  # nothing outside the face square
    empty = loss.generator_loss(StepContext(lq=hq, hq=hq, sr=noisy, batch=_batch(faces=False)))
    assert float(empty) == 0.0 and empty.requires_grad
    assert float(loss.generator_loss(StepContext(lq=hq, hq=hq, sr=noisy, batch={}))) == 0.0  # general sets


def test_mse_terms_measure_images_in_minus_one_to_one_as_osediff(hq):
    """PixelMSE and FaceMSE equal F.mse_loss of the images mapped to [-1, 1] (OSEDiff's), or of the
    [0, 1] images with range "0..1"; an unknown range is refused."""
    import torch.nn.functional as F

    from headsup.objectives.reconstruction import PixelMSE

    noisy = (hq + 0.1 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    ctx = StepContext(lq=hq, hq=hq, sr=noisy, batch=_batch())
    signed = F.mse_loss(noisy * 2 - 1, hq * 2 - 1)
    assert float(PixelMSE().generator_loss(ctx)) == pytest.approx(float(signed), rel=1e-5)
    assert float(PixelMSE(range="0..1").generator_loss(ctx)) == pytest.approx(float(F.mse_loss(noisy, hq)), rel=1e-5)
    crops = [face_crops(x, _batch()["face_boxes"], _batch()["face_valid"], 128) for x in (noisy, hq)]
    face_signed = F.mse_loss(crops[0] * 2 - 1, crops[1] * 2 - 1)
    assert float(FaceMSE().generator_loss(ctx)) == pytest.approx(float(face_signed), rel=1e-5)
    with pytest.raises(ValueError, match="range"):
        PixelMSE(range="0..255")


def test_face_lpips(hq, lpips_files):
    from tests.test_lpips import torchmetrics_lpips

    loss = FaceLPIPS(str(lpips_files[0]), size=64)
    assert float(loss.generator_loss(StepContext(lq=hq, hq=hq, sr=hq, batch=_batch()))) == pytest.approx(0, abs=1e-6)
    blurred = torch.nn.functional.avg_pool2d(hq, 5, 1, 2).requires_grad_(True)
    value = loss.generator_loss(StepContext(lq=hq, hq=hq, sr=blurred, batch=_batch()))
    batch = _batch()
    crops = [face_crops(x.detach(), batch["face_boxes"], batch["face_valid"], 64) for x in (blurred, hq)]
    expected = torchmetrics_lpips(lpips_files[0])(*crops, normalize=True).mean()  # an independent LPIPS
    assert float(value) == pytest.approx(float(expected), rel=1e-5) and float(expected) > 1e-3
    value.backward()
    assert blurred.grad.abs().sum() > 0 and not any(p.requires_grad for p in loss.lpips.parameters())


def test_identity_loss_is_zero_for_the_same_face_and_trains_only_the_generator(hq, facenet_file):
    loss = IdentityLoss(IdentityNet(str(facenet_file)))
    loss.train()
    assert not loss.identity.net.training and not any(p.requires_grad for p in loss.identity.parameters())
    assert float(loss.generator_loss(StepContext(lq=hq, hq=hq, sr=hq, batch=_batch()))) == pytest.approx(0, abs=1e-5)
    other = hq.flip(-1).clone().requires_grad_(True)  # the face is elsewhere: a different crop
    value = loss.generator_loss(StepContext(lq=hq, hq=hq, sr=other, batch=_batch()))
    assert 0 < float(value) <= 2
    value.backward()
    assert other.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss.identity.parameters())
    empty = loss.generator_loss(StepContext(lq=hq, hq=hq, sr=other, batch=_batch(faces=False)))
    assert float(empty) == 0.0
    seen = []  # SR and HQ are cut out at the batch's MTCNN boxes (facenet's crop), not boxes guessed from landmarks
    crops = loss.identity.crops
    loss.identity.crops = lambda images, landmarks, boxes=None: seen.append(boxes) or crops(images, landmarks, boxes)
    loss.generator_loss(StepContext(lq=hq, hq=hq, sr=other, batch=_batch()))
    assert len(seen) == 2 and all(torch.equal(b, BOX[None].repeat(2, 1)) for b in seen)
    with pytest.raises(FileNotFoundError, match="face-recognition weights.*/nonexistent/facenet.pt"):
        IdentityNet("/nonexistent/facenet.pt")
