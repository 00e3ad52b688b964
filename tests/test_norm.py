"""SplitGroupNorm computes nn.GroupNorm's function; the generator's option leaves outputs unchanged."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from headsup.models.generator import OneStepSR
from headsup.models.norm import SplitGroupNorm, use_split_group_norm
from headsup.testing.tiny import TinySD


@pytest.mark.parametrize("shape", [(2, 64, 17, 23), (1, 64, 391)])  # conv maps and attention's (B, C, HW)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_split_statistics_give_group_norm(shape, dtype):
    torch.manual_seed(0)
    ref = nn.GroupNorm(32, 64, eps=1e-6)
    nn.init.normal_(ref.weight)
    nn.init.normal_(ref.bias)
    x = (torch.randn(shape) * 3 + 5).to(dtype)  # a mean far from zero, as activations have
    split = SplitGroupNorm(32, 64, eps=1e-6)
    split.load_state_dict(ref.to(dtype).state_dict())
    split.to(dtype)
    split.split = True
    out = split(x)
    expected = nn.functional.group_norm(x.float(), 32, ref.weight.float(), ref.bias.float(), 1e-6)
    assert out.dtype == dtype and out.shape == x.shape
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert (out.float() - expected).abs().max() < tol * expected.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert split(x).dtype == torch.float32  # as autocast runs GroupNorm


def test_conversion_keeps_parameters_and_state_dict_keys():
    unet = TinySD().build().unet
    before = unet.state_dict()
    norms = use_split_group_norm(unet)
    assert norms and not [m for m in unet.modules() if type(m) is nn.GroupNorm]
    after = unet.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)


def test_generator_option_gives_the_same_output():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD()).eval()
    lq = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        plain = gen(lq)
        gen.split_group_norm = True
        on_cpu = gen(lq)  # the option acts on CUDA only
        assert not any(m.split for m in gen._norms)
        for m in gen._norms:  # force it on to check the function on this device
            m.split = True
        forced = gen.decode(gen.denoise(gen.encode(lq)))[..., :96, :80]
    assert torch.equal(on_cpu, plain)
    assert (forced - plain).abs().max() < 1e-4
