"""LPIPS loads from local files only, is frozen, and behaves like a distance."""

from __future__ import annotations

import pytest
import torch

from headsup.models.lpips import LPIPS
from headsup.objectives.base import StepContext
from headsup.objectives.reconstruction import LPIPSLoss


@pytest.fixture()
def weight_files(lpips_files):
    return lpips_files


def test_loaded_weights_are_used_and_frozen(weight_files):
    vgg, lins = weight_files
    model = LPIPS.from_files(vgg, lins)
    state = torch.load(vgg, weights_only=True)
    assert torch.equal(model.slices[1][1].weight, state["features.5.weight"])
    assert torch.equal(model.lins[4].weight, torch.load(lins, weights_only=True)["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training


def test_distance_properties_and_gradient_to_input(weight_files):
    loss = LPIPSLoss(*map(str, weight_files))
    x = torch.rand(2, 3, 64, 64)
    y = torch.rand(2, 3, 64, 64)
    sr = y.clone().requires_grad_(True)
    same = loss.generator_loss(StepContext(lq=x, hq=y, sr=sr))
    assert float(same) == pytest.approx(0.0, abs=1e-6)
    other = loss.generator_loss(StepContext(lq=x, hq=y, sr=(x + 0 * sr)))
    assert float(other) > 0
    other.backward()
    assert sr.grad is not None


def test_missing_weights_name_the_file(tmp_path, weight_files):
    with pytest.raises(FileNotFoundError, match="vgg16-missing.pth"):
        LPIPS.from_files(tmp_path / "vgg16-missing.pth", weight_files[1])
    torch.save({"other": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match="wrong.pth"):
        LPIPS.from_files(weight_files[0], tmp_path / "wrong.pth")
