"""FaceDegradation: output size, determinism, batch independence, milder than its strongest settings."""

from __future__ import annotations

import pytest
import torch
from skimage.data import astronaut

from headsup.degradations import FaceDegradation


@pytest.fixture(scope="module")
def faces():
    img = torch.from_numpy(astronaut()[30:158, 170:298]).permute(2, 0, 1).float() / 255
    return torch.stack([img, img.flip(-1), img, img.flip(-2)])


@pytest.mark.parametrize("backend", ["kornia", "libjpeg"])
def test_shape_determinism_and_batch_independence(faces, backend):
    deg = FaceDegradation(jpeg_backend=backend)
    p = deg.sample(4, torch.Generator().manual_seed(0))
    lq = deg(faces, p)
    assert lq.shape == (4, 3, 32, 32) and torch.equal(lq, deg(faces, p))
    assert torch.equal(lq, (lq * 255).round() / 255)
    alone = deg(faces[2:3], {k: v[2:3] for k, v in p.items()})
    assert torch.equal(alone[0], lq[2])


def test_parameter_ranges_and_isotropy():
    p = FaceDegradation().sample(5000, torch.Generator().manual_seed(0))
    assert 1 <= float(p["downsample"].min()) and float(p["downsample"].max()) <= 30
    assert 0 <= float(p["sigma"].min()) and float(p["sigma"].max()) * 255 <= 20 + 1e-4
    iso = p["theta"] == 0
    assert abs(float(iso.float().mean()) - 0.5) < 0.03
    assert torch.equal(p["sigma_x"][iso], p["sigma_y"][iso])


def test_stronger_settings_lose_more_detail(faces):
    mild = FaceDegradation(blur_sigma=(1.0, 1.0), downsample_range=(1.0, 1.0), noise_range=(0.0, 0.0),
                           jpeg_range=(95.0, 95.0))
    harsh = FaceDegradation(blur_sigma=(8.0, 8.0), downsample_range=(8.0, 8.0), noise_range=(20.0, 20.0),
                            jpeg_range=(30.0, 30.0))
    target = torch.nn.functional.interpolate(faces, size=(32, 32), mode="area")
    gen = torch.Generator().manual_seed(0)
    err_mild = (mild.degrade(faces, gen) - target).abs().mean()
    err_harsh = (harsh.degrade(faces, gen) - target).abs().mean()
    assert err_harsh > 2 * err_mild
