"""Discriminator (frozen timm backbone, trainable heads) and the adversarial objective."""

from __future__ import annotations

import pytest
import timm
import torch
from skimage.data import astronaut

from headsup.models.discriminator import Discriminator
from headsup.objectives.adversarial import Adversarial
from headsup.objectives.base import StepContext


def _disc(**kw) -> Discriminator:
    torch.manual_seed(0)
    return Discriminator("test_resnet", random_init=True, out_indices=(1, 2), head_channels=16, input_size=64, **kw)


@pytest.fixture(scope="module")
def images():
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    real = torch.stack([img[:, :128, :128], img[:, 128:256, 200:328]])
    fake = torch.nn.functional.avg_pool2d(real, 7, 1, 3)  # blurred "SR"
    return real, fake


def test_backbone_weights_come_from_a_local_file(tmp_path):
    with pytest.raises(ValueError, match="local `weights`"):
        Discriminator("test_resnet")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        Discriminator("test_resnet", weights=str(tmp_path / "missing.pth"))
    torch.manual_seed(3)
    state = timm.create_model("test_resnet").state_dict()
    torch.save(state, tmp_path / "test_resnet.pth")
    disc = Discriminator("test_resnet", weights=str(tmp_path / "test_resnet.pth"), out_indices=(1, 2))
    assert torch.equal(disc.backbone.conv1[0].weight, state["conv1.0.weight"])
    assert not any(p.requires_grad for p in disc.backbone.parameters())
    assert all(p.requires_grad for p in disc.head_parameters())
    disc.train()
    assert not disc.backbone.training
    # timm's hub repos ship `model.safetensors`: the same tensors load from that format
    from safetensors.torch import save_file

    save_file(state, tmp_path / "model.safetensors")
    disc = Discriminator("test_resnet", weights=str(tmp_path / "model.safetensors"), out_indices=(1, 2))
    assert torch.equal(disc.backbone.conv1[0].weight, state["conv1.0.weight"])


def test_generator_and_discriminator_gradients_stay_apart(images):
    real, fake = images
    gan = Adversarial(_disc())
    sr = fake.clone().requires_grad_(True)
    gan.generator_loss(StepContext(lq=sr, hq=real, sr=sr)).backward()
    assert sr.grad.abs().sum() > 0
    assert all(p.grad is None for p in gan.discriminator.parameters())  # no generator gradient in D
    assert all(p.requires_grad for p in gan.discriminator.head_parameters())  # heads trainable again
    sr.grad = None
    gan.aux_loss(StepContext(lq=sr, hq=real, sr=sr.detach())).backward()
    assert all(p.grad is not None for p in gan.discriminator.head_parameters())
    assert all(p.grad is None for p in gan.discriminator.backbone.parameters()) and sr.grad is None


@pytest.mark.parametrize("kind", ["hinge", "nonsaturating"])
def test_loss_values_for_a_constant_discriminator(images, kind):
    real, fake = images
    gan = Adversarial(_disc(), loss=kind)
    with torch.no_grad():
        for head in gan.discriminator.heads:
            head[2].weight.zero_()
            head[2].bias.fill_(0.5)
    ctx = StepContext(lq=fake, hq=real, sr=fake)
    g, d = float(gan.generator_loss(ctx).detach()), float(gan.aux_loss(ctx).detach())
    sp = torch.nn.functional.softplus
    if kind == "hinge":
        assert g == pytest.approx(-0.5) and d == pytest.approx(0.5 + 1.5)
    else:
        assert g == pytest.approx(float(sp(torch.tensor(-0.5)))) and d == pytest.approx(
            float(sp(torch.tensor(-0.5)) + sp(torch.tensor(0.5)))
        )


def test_r1_penalty_and_training_separates_real_from_fake(images):
    real, fake = images
    ctx = StepContext(lq=fake, hq=real, sr=fake)
    assert float(Adversarial(_disc(), r1_weight=10.0).aux_loss(ctx)) > float(Adversarial(_disc()).aux_loss(ctx))
    gan = Adversarial(_disc(), lr=1e-2)
    opt = gan.configure_optimizer()
    first = float(gan.aux_loss(ctx).detach())
    for _ in range(40):
        opt.zero_grad()
        gan.aux_loss(ctx).backward()
        opt.step()
    assert float(gan.aux_loss(ctx).detach()) < 0.85 * first
    with torch.no_grad():
        margin = [(r.mean() - f.mean()) for r, f in zip(gan.discriminator(real), gan.discriminator(fake))]
    assert all(m > 0 for m in margin)  # real now scores above blurred


def test_face_region_uses_face_crops_and_skips_faceless_batches(images):
    real, fake = images
    gan = Adversarial(_disc(), region="face", face_size=64)
    none = {"face_boxes": torch.zeros(2, 1, 4), "face_valid": torch.zeros(2, 1, dtype=torch.bool)}
    sr = fake.clone().requires_grad_(True)
    assert float(gan.generator_loss(StepContext(lq=sr, hq=real, sr=sr, batch=none))) == 0.0
    assert float(gan.aux_loss(StepContext(lq=sr, hq=real, sr=sr, batch=none))) == 0.0
    faces = {"face_boxes": torch.tensor([[[30.0, 30.0, 90.0, 100.0]], [[0.0, 0.0, 10.0, 10.0]]]),
             "face_valid": torch.tensor([[True], [False]])}
    gan.generator_loss(StepContext(lq=sr, hq=real, sr=sr, batch=faces)).backward()
    assert sr.grad[0].abs().sum() > 0 and sr.grad[1].abs().sum() == 0
