"""RealESRGANDegradation: determinism, parameter statistics, dtype/autocast, gradients, operators."""

from __future__ import annotations

import math

import pytest
import torch
from skimage.data import astronaut

from headsup.degradations import RealESRGANDegradation
from headsup.degradations import functional as Fd
from headsup.degradations import kernels as K


@pytest.fixture(scope="module")
def hq():
    img = torch.from_numpy(astronaut()[100:228, 150:278]).permute(2, 0, 1).float() / 255
    return torch.stack([img, img.flip(-1), img.flip(-2), img.transpose(-1, -2)])


def test_shape_range_and_8_bit(hq):
    lq = RealESRGANDegradation().degrade(hq, torch.Generator().manual_seed(0))
    assert lq.shape == (4, 3, 32, 32)
    assert lq.min() >= 0 and lq.max() <= 1
    assert torch.equal(lq, (lq * 255).round() / 255)


def test_same_params_same_lq_same_seed_same_params(hq):
    deg = RealESRGANDegradation()
    p = deg.sample(4, torch.Generator().manual_seed(3))
    assert torch.equal(deg(hq, p), deg(hq, p))
    q = deg.sample(4, torch.Generator().manual_seed(3))
    assert all(torch.equal(p[k], q[k]) for k in p)
    r = deg.sample(4, torch.Generator().manual_seed(4))
    assert not torch.equal(deg(hq, p), deg(hq, r))


def test_trace_follows_the_forward_pass(hq):
    deg = RealESRGANDegradation()
    p = deg.sample(4, torch.Generator().manual_seed(5))
    trace = deg.trace(hq, p)
    assert list(trace) == ["stage1", "stage2", "final"]
    assert torch.equal(trace["final"], deg(hq, p))
    # stage 1 resizes by resize1 (of 128 px); stage 2 ends at resize2 of the 32 px target
    assert trace["stage1"].shape[-1] == max(1, int(128 * float(p["resize1"][0])))
    assert trace["stage2"].shape[-1] == max(1, int(128 / 4 * float(p["resize2"][0])))
    with pytest.raises(ValueError, match="one seed group"):
        deg.trace(hq[:2], deg.sample_indexed([1, 2]))


def test_index_seeded_lq_does_not_depend_on_batch(hq):
    deg = RealESRGANDegradation()
    both = deg(hq[:2], deg.sample_indexed([7, 8]))
    alone = deg(hq[1:2], deg.sample_indexed([8]))
    assert torch.equal(both[1:], alone)


def test_parameter_statistics_match_configuration():
    deg = RealESRGANDegradation()
    n = 20000
    p = deg.sample(n, torch.Generator().manual_seed(0))
    sinc = p["kind1"] == K.SINC
    assert abs(sinc.float().mean() - 0.1) < 0.01
    freq = torch.bincount(p["kind1"][~sinc], minlength=6).float() / (~sinc).sum()
    assert torch.allclose(freq, torch.tensor([0.45, 0.25, 0.12, 0.03, 0.12, 0.03]), atol=0.015)
    assert abs(p["blur2"].float().mean() - 0.8) < 0.015
    assert abs(p["final_sinc"].float().mean() - 0.8) < 0.015
    assert abs(p["gaussian1"].float().mean() - 0.5) < 0.015
    assert abs(p["gray2"].float().mean() - 0.4) < 0.015
    assert p["sigma1"].min() * 255 >= 1 - 1e-4 and p["sigma1"].max() * 255 <= 30 + 1e-4
    assert p["jpeg1"].min() >= 30 and p["jpeg1"].max() <= 95
    assert set(p["ksize1"].unique().tolist()) == set(range(7, 22, 2))
    iso = (p["kind1"] % 2 == 0) & ~sinc
    assert torch.equal(p["sigma_x1"][iso], p["sigma_y1"][iso]) and (p["theta1"][iso] == 0).all()
    small = sinc & (p["ksize1"] < 13)
    assert p["cutoff1"][small].min() >= math.pi / 3 - 1e-6
    # the batch-level resize is one draw per batch; its up/down/keep frequencies over many batches
    draws = torch.tensor([float(deg.sample(1, torch.Generator().manual_seed(i))["resize1"][0]) for i in range(2000)])
    assert abs((draws > 1).float().mean() - 0.2) < 0.03
    assert abs((draws == 1).float().mean() - 0.1) < 0.03
    assert draws.min() >= 0.15 and draws.max() <= 1.5


def test_fp32_inside_bf16_autocast_and_no_gradient_error(hq):
    deg = RealESRGANDegradation()
    p = deg.sample(4, torch.Generator().manual_seed(1))
    ref = deg(hq, p)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deg(hq, p)
    assert out.dtype == torch.float32 and torch.equal(out, ref)
    x = hq.clone().requires_grad_(True)
    deg(x, p).sum().backward()  # gradients are not needed but must not error


def test_jpeg_error_decreases_with_quality(hq):
    errors = [float((Fd.jpeg(hq, torch.full((4,), q)) - hq).abs().mean()) for q in (20.0, 50.0, 90.0)]
    assert errors[0] > errors[1] > errors[2] > 0


def test_noise_operators(hq):
    gen = torch.Generator().manual_seed(0)
    sigma = torch.full((4,), 20 / 255)
    gray = torch.tensor([True, False, True, False])
    noisy = Fd.gaussian_noise(hq, sigma, gray, gen) - hq
    assert abs(float(noisy.std()) - 20 / 255) < 0.01
    assert torch.allclose(noisy[0, 0], noisy[0, 1], atol=1e-6)  # gray noise: same on every channel
    assert not torch.allclose(noisy[1, 0], noisy[1, 1], atol=1e-3)
    pn = Fd.poisson_noise(hq, torch.full((4,), 1.0), gray, gen) - hq
    assert float(pn.abs().mean()) > 0 and torch.allclose(pn[0, 0], pn[0, 2], atol=1e-6)


def test_usm_sharpening_adds_contrast_at_edges(hq):
    sharp = Fd.usm_sharpen(hq)
    assert sharp.shape == hq.shape and sharp.min() >= 0 and sharp.max() <= 1
    lap = torch.tensor([[0.0, 1, 0], [1, -4, 1], [0, 1, 0]]).expand(4, 3, 3)
    assert Fd.blur(sharp, lap).abs().mean() > Fd.blur(hq, lap).abs().mean()


def test_bad_configuration_is_rejected():
    with pytest.raises(ValueError, match="kernel_prob"):
        RealESRGANDegradation(kernel_prob=(0.5, 0.5))
    with pytest.raises(ValueError, match="kernel_range"):
        RealESRGANDegradation(kernel_range=(8, 21))


def test_fft_blur_equals_direct_convolution(hq):
    import kornia

    gen = torch.Generator().manual_seed(0)
    for k in (15, 21, 51):
        kern = torch.rand(4, k, k, generator=gen)
        kern = kern / kern.sum(dim=(1, 2), keepdim=True)
        direct = kornia.filters.filter2d(hq, kern, border_type="reflect")
        assert torch.allclose(Fd.blur(hq, kern), direct, atol=1e-5), k


def test_cpu_fft_blur_and_jpeg_in_chunks_equal_the_whole_batch(hq, monkeypatch):
    kern = torch.rand(hq.shape[0], 21, 21, generator=torch.Generator().manual_seed(2))
    kern = kern / kern.sum(dim=(1, 2), keepdim=True)
    monkeypatch.setattr(Fd, "CPU_CHUNK_BYTES", 1 << 40)
    whole = Fd.blur(hq, kern)
    quality = torch.tensor([30.0, 50.0, 70.0, 95.0])
    whole_jpeg = Fd.jpeg(hq, quality)
    monkeypatch.setattr(Fd, "CPU_CHUNK_BYTES", 1)  # one sample at a time
    assert torch.allclose(Fd.blur(hq, kern), whole, atol=1e-6)
    assert torch.allclose(Fd.jpeg(hq, quality), whole_jpeg, atol=1e-6)
    shared = Fd.jpeg(hq, torch.tensor(50.0))  # one quality factor for the whole batch
    assert torch.allclose(shared[1], whole_jpeg[1], atol=1e-6)
    assert torch.equal(Fd.jpeg(hq, torch.tensor(50.0), "libjpeg"), Fd.jpeg(hq, quality.fill_(50), "libjpeg"))


def test_blur_trims_shared_zero_rings_and_skips_inactive_samples(hq):
    import kornia

    gen = torch.Generator().manual_seed(1)
    small = torch.rand(4, 7, 7, generator=gen)
    small = small / small.sum(dim=(1, 2), keepdim=True)
    padded = torch.nn.functional.pad(small, (7, 7, 7, 7))  # a 7x7 support on the 21 grid
    direct = kornia.filters.filter2d(hq, small, border_type="reflect")
    assert torch.allclose(Fd.blur(hq, padded), direct, atol=1e-6)
    active = torch.tensor([True, False, True, False])
    out = Fd.blur(hq, padded, active)
    assert torch.equal(out[~active], hq[~active])
    assert torch.allclose(out[active], direct[active], atol=1e-6)
    assert torch.equal(Fd.blur(hq, padded, torch.zeros(4, dtype=torch.bool)), hq)


def test_libjpeg_backend_is_the_real_codec(hq, tmp_path):
    from PIL import Image

    errors = [float((Fd.jpeg(hq, torch.full((4,), q), "libjpeg") - hq).abs().mean()) for q in (20.0, 50.0, 90.0)]
    assert errors[0] > errors[1] > errors[2] > 0
    # the same bytes as Pillow's libjpeg at the same quality, up to decoder rounding
    q = torch.tensor([40.0, 40.0, 75.0, 75.0])
    out = Fd.jpeg(hq, q, "libjpeg")
    Image.fromarray((hq[2].permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(tmp_path / "a.jpg", quality=75)
    ref = torch.from_numpy(__import__("numpy").asarray(Image.open(tmp_path / "a.jpg"))).permute(2, 0, 1) / 255
    assert (out[2] - ref).abs().mean() < 2 / 255
    deg = RealESRGANDegradation(jpeg_backend="libjpeg")
    p = deg.sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(deg(hq, p), deg(hq, p))
    with pytest.raises(ValueError, match="backend"):
        Fd.jpeg(hq, q, "png")
