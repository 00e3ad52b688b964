"""CUDA checks: the batched degradations and tiled inference give on a GPU what they give on the CPU.

Marked `gpu` (deselected by default; `pytest -m gpu` on a machine with a CUDA device).
"""

from __future__ import annotations

import pytest
import torch

from headsup.degradations import RealESRGANDegradation
from headsup.degradations import functional as Fd
from headsup.degradations import kernels as K
from headsup.models.generator import OneStepSR
from headsup.testing.tiny import TinySD

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture
def no_tf32():
    """Full fp32 matmuls and convolutions (cuDNN uses TF32 by default: about 1e-3 off the CPU)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_realesrgan_on_cuda_is_deterministic_fp32_and_8_bit():
    deg = RealESRGANDegradation().cuda()
    hq = torch.rand(16, 3, 256, 256, device="cuda")
    params = deg.sample(16, generator=torch.Generator("cuda").manual_seed(3), device="cuda")
    again = deg.sample(16, generator=torch.Generator("cuda").manual_seed(3), device="cuda")
    assert all(torch.equal(params[k], again[k]) for k in params)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a = deg(hq, params)
        b = deg(hq, params)
    assert a.device.type == "cuda" and a.dtype == torch.float32 and a.shape == (16, 3, 64, 64)
    assert torch.equal(a, b)
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-3)
    assert float(a.std()) > 0.01  # not a constant image


@pytest.mark.parametrize("size", [9, 21])  # direct filtering and the FFT path
def test_blur_and_jpeg_match_the_cpu(size):
    torch.manual_seed(0)
    x = torch.rand(6, 3, 160, 144)
    kinds = torch.tensor([0, 1, 2, 3, 4, 6])
    ks = torch.full((6,), size)
    kern = K.mixed(kinds, ks, torch.full((6,), 2.0), torch.full((6,), 1.0), torch.full((6,), 0.3),
                   torch.full((6,), 1.5), torch.full((6,), 1.2))
    cpu = Fd.blur(x, kern)
    gpu = Fd.blur(x.cuda(), kern.cuda()).cpu()
    assert (gpu - cpu).abs().max() < 1e-4
    q = torch.tensor([30.0, 50, 70, 90, 95, 40])
    jc = Fd.jpeg(x, q, "kornia")
    jg = Fd.jpeg(x.cuda(), q.cuda(), "kornia").cpu()
    assert (jg - jc).abs().mean() < 1e-3


def test_tiled_inference_on_cuda_matches_the_cpu(no_tf32):
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), tiling="always", tile_size=64, tile_overlap=16).eval()
    lq = torch.rand(1, 3, 40, 52)
    outs = {}
    with torch.no_grad():
        for passes in (0, 2):
            gen.norm_passes = passes
            outs["cpu", passes] = gen(lq)
        gen.cuda()
        for passes in (0, 2):
            gen.norm_passes = passes
            outs["cuda", passes] = gen(lq.cuda()).cpu()
        gen.norm_passes, gen.tiling = 0, "never"
        whole = gen(lq.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gen(lq.cuda()).float()
        gen.merge_lora = True
        merged = gen(lq.cuda())
    assert gen.last_tiling["unet"] is None and outs["cpu", 0].shape == (1, 3, 160, 208)
    for passes in (0, 2):
        assert (outs["cuda", passes] - outs["cpu", passes]).abs().max() < 1e-3
    assert (half - whole).abs().mean() < 0.02
    assert (merged - whole).abs().max() < 1e-4


def test_auto_tiling_budget_reads_free_cuda_memory():
    gen = OneStepSR(TinySD(), tiling="auto").eval().cuda()
    free = torch.cuda.mem_get_info()[0]
    assert 0 < gen._budget(torch.device("cuda")) <= free
    gen.memory_budget_gb = 1e-6
    lq = torch.rand(1, 3, 48, 48, device="cuda")
    with torch.no_grad():
        out = gen(lq)
    assert out.shape == (1, 3, 192, 192) and gen.last_tiling["decode"] is not None


@pytest.mark.parametrize("amp", [False, True])
def test_cuda_graph_replay_equals_eager(amp):
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), tiling="never").eval().cuda()
    a, b = torch.rand(2, 1, 3, 40, 52, device="cuda")
    c = torch.rand(2, 3, 24, 32, device="cuda")
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        eager = [gen(x).float() for x in (a, b, c)]
        gen.cuda_graphs = True
        first = gen(a)  # eager, then recorded
        assert gen._graph is not None
        replayed = [gen(b), gen(a)]  # new values through the same graph
        other_shape = gen(c)  # records a graph for the new shape
        assert gen._graph[0][0] == tuple(c.shape)
        again = gen(c)
    tol = 1e-2 if amp else 1e-5
    assert (first.float() - eager[0]).abs().max() < tol
    assert (replayed[0].float() - eager[1]).abs().max() < tol
    assert (replayed[1].float() - eager[0]).abs().max() < tol
    assert (other_shape.float() - eager[2]).abs().max() < tol and (again.float() - eager[2]).abs().max() < tol
    assert replayed[0].data_ptr() != replayed[1].data_ptr()  # callers get their own tensors


def test_split_group_norm_on_cuda_gives_the_same_output(no_tf32):
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), tiling="never").eval().cuda()
    lq = torch.rand(1, 3, 40, 52, device="cuda")
    with torch.no_grad():
        plain = gen(lq)
        gen.split_group_norm = True
        split = gen(lq)
        assert all(m.split for m in gen._norms)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = gen(lq).float()
    assert (split - plain).abs().max() < 1e-4
    assert (half - plain).abs().mean() < 0.02
