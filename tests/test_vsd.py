"""VSD: the closed-form gradient, the shared teacher / fake-score UNet, and who gets which gradient."""

from __future__ import annotations

import pytest
import torch

from headsup.models.generator import OneStepSR
from headsup.models.teacher import TeacherWithFakeScore, to_x0
from headsup.objectives.base import StepContext
from headsup.objectives.vsd import VSDLoss
from headsup.testing.tiny import TinySD


@pytest.fixture()
def scores():
    torch.manual_seed(0)
    return TeacherWithFakeScore(TinySD(), guidance_scale=7.5, prompt="a photo", negative_prompt="a drawing")


def test_vsd_gradient_matches_the_closed_form(scores):
    vsd = VSDLoss(scores, t_min=20, t_max=980)
    scores.real_eps = lambda z_t, t, positive=None: 0.5 * z_t  # toy scores
    scores.fake_eps = lambda z_t, t, positive=None: 0.2 * z_t + 0.1
    z0 = torch.randn(3, 4, 8, 8, requires_grad=True)
    vsd.seed(7)
    loss = vsd.generator_loss(StepContext(lq=z0, hq=z0, sr=z0, latent=z0))
    loss.backward()

    gen = torch.Generator().manual_seed(7)  # the same draws, by hand
    t = torch.randint(20, 980, (3,), generator=gen)
    noise = torch.randn(z0.shape, generator=gen)
    a = scores.alphas_cumprod[t].view(-1, 1, 1, 1)
    z = z0.detach()
    z_t = a.sqrt() * z + (1 - a).sqrt() * noise
    x0_real = (z_t - (1 - a).sqrt() * 0.5 * z_t) / a.sqrt()
    x0_fake = (z_t - (1 - a).sqrt() * (0.2 * z_t + 0.1)) / a.sqrt()
    g = (x0_fake - x0_real) / (z - x0_real).abs().mean(dim=(1, 2, 3), keepdim=True)
    # OSEDiff's F.mse_loss(z0, (z0 - g).detach()): value mean(g^2), gradient 2 g / N
    assert torch.allclose(z0.grad, 2 * g / z0.numel(), rtol=1e-4, atol=1e-8)
    assert float(loss.detach()) == pytest.approx(float((g**2).mean()), rel=1e-4)


def test_one_unet_serves_teacher_and_fake_score(scores):
    torch.manual_seed(0)
    plain = TinySD().build(include_vae=False).unet.eval()
    z_t, t = torch.randn(2, 4, 16, 16), torch.tensor([500, 900])
    with torch.no_grad():
        pos = plain(z_t, t, encoder_hidden_states=scores.prompt_embeds.expand(2, -1, -1)).sample
        neg = plain(z_t, t, encoder_hidden_states=scores.negative_embeds.expand(2, -1, -1)).sample
        assert torch.allclose(scores.real_eps(z_t, t), neg + 7.5 * (pos - neg), atol=1e-5)
        assert torch.allclose(scores.fake_eps(z_t, t), pos, atol=1e-5)  # LoRA starts as identity
        for p in scores.fake_parameters():
            p.add_(0.05 * torch.randn_like(p))
        assert not torch.allclose(scores.fake_eps(z_t, t), pos, atol=1e-3)
        assert torch.allclose(scores.real_eps(z_t, t), neg + 7.5 * (pos - neg), atol=1e-5)  # teacher untouched
    full = sum(p.numel() for p in plain.parameters())
    held = sum(p.numel() for p in scores.parameters())
    lora = sum(p.numel() for p in scores.fake_parameters())
    assert held == full + lora and lora < 0.2 * full  # one UNet plus adapters, not two UNets


def test_each_loss_trains_only_its_own_parameters(scores):
    torch.manual_seed(0)
    generator = OneStepSR(TinySD())
    vsd = VSDLoss(scores)
    out = generator.generate(torch.rand(2, 3, 4, 4))
    ctx = StepContext(lq=out.image, hq=out.image, sr=out.image, latent=out.latent)
    vsd.generator_loss(ctx).backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters() if p.requires_grad)
    assert all(p.grad is None for p in scores.parameters())  # neither teacher nor fake score
    generator.zero_grad(set_to_none=True)
    detached = StepContext(lq=ctx.lq, hq=ctx.hq, sr=ctx.sr.detach(), latent=out.latent.detach())
    vsd.aux_loss(detached).backward()
    fake = {id(p) for p in scores.fake_parameters()}
    assert all(p.grad is not None for p in scores.fake_parameters())
    assert all(p.grad is None for p in scores.parameters() if id(p) not in fake)  # frozen base
    assert all(p.grad is None for p in generator.parameters())
    opt = vsd.configure_optimizer()
    assert {id(p) for g in opt.param_groups for p in g["params"]} == fake


def test_x0_from_eps_inverts_the_forward_process():
    z0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4)
    a = torch.tensor([0.3, 0.9])
    z_t = a.sqrt().view(-1, 1, 1, 1) * z0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    assert torch.allclose(to_x0(eps, z_t, a), z0, atol=1e-5)
