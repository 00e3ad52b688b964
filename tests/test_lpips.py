"""LPIPS loads from local files only, is frozen, and equals torchmetrics' LPIPS (the release's network)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from skimage.data import astronaut

from headsup.metrics.extra import LPIPSMetric
from headsup.models.lpips import _SLICES, LPIPS, shipped_lpips_weights
from headsup.objectives.base import StepContext
from headsup.objectives.face import FaceLPIPS
from headsup.objectives.reconstruction import LPIPSLoss


@pytest.fixture()
def weight_files(lpips_files):
    return lpips_files


def torchmetrics_lpips(vgg_file) -> torch.nn.Module:
    """torchmetrics' LPIPS-VGG with the release's linear layers and the VGG16 of `vgg_file` (no download);
    called as `net(x, y, normalize=True)` for inputs in [0, 1]."""
    from torchmetrics.functional.image.lpips import _LPIPS

    net = _LPIPS(pretrained=True, net="vgg", pnet_rand=True)  # pnet_rand: torchvision weights=None
    state = {}
    for key, value in torch.load(vgg_file, weights_only=True).items():
        layer = int(key.split(".")[1])
        block = next(i for i, (a, b) in enumerate(_SLICES) if a <= layer < b)
        state[f"slice{block + 1}.{layer}.{key.split('.', 2)[2]}"] = value
    net.net.load_state_dict(state)
    return net.eval()


@pytest.fixture(scope="module")
def reference(lpips_files):
    return torchmetrics_lpips(lpips_files[0])


@pytest.fixture(scope="module")
def pairs():
    """Astronaut crops (face, background) and their noisy, blurred and swapped counterparts."""
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float()[None] / 255
    hq = torch.cat([img[..., 40:88, 190:238], img[..., 300:348, 300:348]])
    noisy = (hq + 0.1 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    blurred = F.avg_pool2d(hq, 5, 1, 2, count_include_pad=False)
    return torch.cat([noisy, blurred, hq.flip(0)]), hq.repeat(3, 1, 1, 1)


def test_loaded_weights_are_used_and_frozen(weight_files):
    vgg, lins = weight_files
    model = LPIPS.from_files(vgg, lins)
    state = torch.load(vgg, weights_only=True)
    assert torch.equal(model.slices[1][1].weight, state["features.5.weight"])
    assert torch.equal(model.lins[4].weight, torch.load(lins, weights_only=True)["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in model.parameters())
    model.train()
    assert not model.training
    default = LPIPS.from_files(vgg)  # the release's linear layers, as torchmetrics ships them
    shipped = torch.load(shipped_lpips_weights(), map_location="cpu", weights_only=True)
    assert torch.equal(default.lins[2].weight, shipped["lin2.model.1.weight"])


def test_equals_torchmetrics_lpips_on_real_images(weight_files, reference, pairs):
    sr, hq = pairs
    ours = LPIPS.from_files(weight_files[0])
    expected = reference(sr, hq, normalize=True).flatten()  # normalize: inputs in [0, 1]
    assert expected.min() > 1e-3  # every pair is really apart
    with torch.no_grad():
        torch.testing.assert_close(ours(sr, hq), expected, rtol=1e-5, atol=0)
        assert float(ours(hq, hq).abs().max()) == 0.0


def test_gradient_to_sr_equals_torchmetrics(weight_files, reference, pairs):
    sr, hq = pairs[0][:1], pairs[1][:1]  # the noisy face crop
    loss = LPIPSLoss(str(weight_files[0]))
    ours = sr.clone().requires_grad_(True)
    loss.generator_loss(StepContext(lq=hq, hq=hq, sr=ours)).backward()
    theirs = sr.clone().requires_grad_(True)
    reference(theirs, hq, normalize=True).mean().backward()
    assert ours.grad.abs().max() > 0
    torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-4 * float(theirs.grad.abs().max()))


def test_face_lpips_and_metric_share_the_network(weight_files):
    vgg = str(weight_files[0])
    loss, face, metric = LPIPSLoss(vgg), FaceLPIPS(vgg), LPIPSMetric(vgg)
    assert loss.lpips is face.lpips is metric.net  # VGG16 loaded once for all three
    assert LPIPSLoss(vgg, str(weight_files[1])).lpips is not loss.lpips  # other linear layers: another net
    both = torch.nn.ModuleDict({"lpips": loss, "face_lpips": face})
    assert not any(p.requires_grad for p in both.parameters())  # nothing of it is trainable / checkpointed


def test_missing_weights_name_the_option_and_file(tmp_path, weight_files, monkeypatch):
    missing = tmp_path / "vgg16-missing.pth"
    for cls in (LPIPSLoss, FaceLPIPS):
        with pytest.raises(FileNotFoundError, match=rf"{cls.__name__} vgg_weights .*vgg16-missing\.pth"):
            cls(str(missing))
    assert "LPIPSMetric vgg_weights" in LPIPSMetric(str(missing)).unavailable
    assert "vgg16-missing.pth" in LPIPSMetric(str(missing)).unavailable
    torch.save({"other": torch.zeros(1)}, tmp_path / "wrong.pth")
    with pytest.raises(KeyError, match="wrong.pth"):
        LPIPS.from_files(weight_files[0], tmp_path / "wrong.pth")
    import torchmetrics.functional.image.lpips as tm_lpips

    monkeypatch.setattr(tm_lpips, "__file__", str(tmp_path / "lpips.py"))  # a torchmetrics without vgg.pth
    with pytest.raises(FileNotFoundError, match="lpips_weights"):
        LPIPSLoss(str(weight_files[0]))
    assert "lpips_weights" in LPIPSMetric(str(weight_files[0])).unavailable
