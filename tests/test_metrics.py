"""PSNR/SSIM follow BasicSR's conventions, checked against independent implementations; the extra
metrics (LMD, identity cosine, NIQE, FID, LPIPS) give their known values on identity cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.data import astronaut
from skimage.metrics import structural_similarity

from headsup.metrics.full_reference import PSNR, SSIM, psnr, ssim


@pytest.fixture(scope="module")
def pair():
    hq = torch.from_numpy(astronaut()[:200, 100:300]).permute(2, 0, 1).float()[None] / 255
    noisy = (hq + 0.05 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    return noisy, hq


def _y(x: torch.Tensor, border: int) -> np.ndarray:
    rgb = (x[0].permute(1, 2, 0).numpy().astype(np.float64) * 255).round()[border:-border, border:-border]
    return 16 + (rgb @ np.array([65.481, 128.553, 24.966])) / 255


def test_psnr_matches_numpy_formula(pair):
    sr, hq = pair
    a, b = _y(sr, 4), _y(hq, 4)
    expected = 10 * np.log10(255**2 / np.mean((a - b) ** 2))
    assert float(psnr(sr, hq, crop_border=4)) == pytest.approx(expected, abs=1e-6)


def test_ssim_matches_skimage_gaussian_ssim(pair):
    sr, hq = pair
    a, b = _y(sr, 4), _y(hq, 4)
    expected = structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    assert float(ssim(sr, hq, crop_border=4)) == pytest.approx(expected, abs=1e-4)


def test_rounding_to_8_bit_first(pair):
    _, hq = pair
    tiny_shift = (hq + 0.4 / 255).clamp(0, 1)  # below half a level: rounds back to the same image
    assert torch.isinf(psnr(tiny_shift, hq)) or float(psnr(tiny_shift, hq)) > 90


def test_metric_averages_per_image_scores(pair):
    sr, hq = pair
    metric = PSNR(crop_border=4)
    metric.update(sr, hq)
    metric.update(hq * 0.9, hq)
    expected = (float(psnr(sr, hq, 4)) + float(psnr(hq * 0.9, hq, 4))) / 2
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    s = SSIM(crop_border=4)
    s.update(hq, hq)
    assert float(s.compute()) == pytest.approx(1.0)


def test_shape_mismatch_is_an_error(pair):
    sr, hq = pair
    with pytest.raises(ValueError, match="differ"):
        PSNR().update(sr[..., :-1], hq)


def test_equals_basicsr_calculate_psnr_and_ssim(pair):
    """BasicSR 1.4.2's own functions (8-bit HWC images, BGR as cv2 reads them), Y and RGB, border 4."""
    from tests.conftest import basicsr_reference

    basicsr_reference()  # the shim that lets basicsr 1.4.2 import with today's torchvision
    from basicsr.metrics import calculate_psnr, calculate_ssim

    sr, hq = pair
    bgr = [(x[0].permute(1, 2, 0).numpy().astype(np.float64) * 255).round()[..., ::-1] for x in (sr, hq)]
    for y in (True, False):
        assert float(psnr(sr, hq, 4, y_channel=y)) == pytest.approx(calculate_psnr(*bgr, 4, test_y_channel=y), abs=1e-5)
        assert float(ssim(sr, hq, 4, y_channel=y)) == pytest.approx(calculate_ssim(*bgr, 4, test_y_channel=y), abs=1e-6)


def test_agrees_with_pyiqa_when_conventions_match(pair):
    """pyiqa's `psnr`/`ssim` default to the Y of YIQ, not BT.601 YCbCr (1.3 dB apart on this pair);
    with `color_space="ycbcr"` PSNR agrees. pyiqa's SSIM also rounds Y to integers (MATLAB's uint8
    `rgb2ycbcr`), so it equals ours on an 8-bit-rounded luminance image."""
    import pyiqa  # installed by `make test` (--no-deps); these metrics need no weights

    sr, hq = ((x * 255).round() / 255 for x in pair)  # pyiqa does not quantise its inputs
    kw = dict(crop_border=4, device="cpu")
    y_psnr = pyiqa.create_metric("psnr", test_y_channel=True, color_space="ycbcr", **kw)(sr, hq)
    assert float(y_psnr) == pytest.approx(float(psnr(sr, hq, 4)), abs=1e-4)
    rgb_psnr = pyiqa.create_metric("psnr", test_y_channel=False, **kw)(sr, hq)
    assert float(rgb_psnr) == pytest.approx(float(psnr(sr, hq, 4, y_channel=False)), abs=1e-4)
    rgb_ssim = pyiqa.create_metric("ssimc", **kw)(sr, hq)
    assert float(rgb_ssim) == pytest.approx(float(ssim(sr, hq, 4, y_channel=False)), abs=1e-4)
    y_ssim = pyiqa.create_metric("ssim", test_y_channel=True, color_space="ycbcr", **kw)(sr, hq)
    y_rounded = [torch.from_numpy(_y(x, 4).round())[None, None] / 255 for x in (sr, hq)]
    assert float(y_ssim) == pytest.approx(float(ssim(*y_rounded, y_channel=False)), abs=1e-4)
    assert abs(float(y_ssim) - float(ssim(sr, hq, 4))) > 1e-4  # the rounding is a real difference
    yiq = pyiqa.create_metric("psnr", test_y_channel=True, **kw)(sr, hq)
    assert abs(float(yiq) - float(y_psnr)) > 0.5  # and pyiqa's default Y is another quantity


# ---------------------------------------------------------------- extra metrics on identity cases
LANDMARKS = [[205.01, 101.73], [246.76, 103.71], [224.67, 128.96], [201.72, 139.25], [245.27, 141.86]]


@pytest.fixture(scope="module")
def face():
    """The astronaut photo with its MTCNN face landmarks, as a one-face batch."""
    hq = torch.from_numpy(astronaut()).permute(2, 0, 1).float()[None] / 255
    batch = {"face_valid": torch.ones(1, 1, dtype=torch.bool), "face_landmarks": torch.tensor([[LANDMARKS]]),
             "face_boxes": torch.tensor([[[181.05, 62.16, 267.75, 172.05]]])}  # MTCNN's
    return hq, batch


def test_landmark_distance_is_zero_on_hq_and_the_shift_on_a_shifted_copy(face):
    from headsup.metrics.extra import LandmarkDistance

    hq, batch = face
    lmd = LandmarkDistance()
    assert float(lmd.scores(hq, hq, batch)[0]) < 0.5  # px: MTCNN finds the annotated landmarks again
    shifted = torch.roll(hq, shifts=(4, 6), dims=(2, 3))  # 4 px down, 6 px right: every landmark moves sqrt(52)
    assert float(lmd.scores(shifted, hq, batch)[0]) == pytest.approx(52**0.5, abs=0.6)


def test_identity_cosine_is_one_for_the_same_face(face, facenet_file):
    from headsup.metrics.extra import IdentityCosine

    hq, batch = face
    deg = IdentityCosine(str(facenet_file))
    same = float(deg.scores(hq, hq, batch)[0])
    assert same == pytest.approx(1.0, abs=1e-6)
    noisy = (hq + 0.2 * torch.randn(hq.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    other = float(deg.scores(noisy, hq, batch)[0])
    assert -1 <= other < same - 1e-6  # random weights: embeddings of any two faces are close, yet not equal
    seen = []  # faces are cut out at the batch's MTCNN boxes (facenet's crop)
    crops = deg.net.crops
    deg.net.crops = lambda images, landmarks, boxes=None: seen.append(boxes) or crops(images, landmarks, boxes)
    deg.scores(noisy, hq, batch)
    valid = batch["face_valid"]
    assert len(seen) == 2 and all(torch.equal(b, batch["face_boxes"][valid]) for b in seen)


def _niqe_features(rgb: torch.Tensor) -> torch.Tensor:
    """NIQE's 36 per-block features (18 at full and 18 at half scale, 96 px blocks) from pyiqa's parts."""
    from pyiqa.archs.func_util import normalize_img_with_gauss
    from pyiqa.archs.niqe_arch import compute_feature
    from pyiqa.matlab_utils import blockproc, imresize
    from pyiqa.utils.color_util import to_y_channel

    y = to_y_channel(rgb, 255, "yiq").round().double()
    out = []
    for scale in (1, 2):
        out.append(blockproc(normalize_img_with_gauss(y, padding="replicate"), [96 // scale] * 2, fun=compute_feature))
        y = imresize(y / 255.0, scale=0.5, antialiasing=True) * 255.0
    return torch.cat(out, -1)[0]


def test_niqe_scores_a_sharp_photo_better_than_its_blurred_copy(tmp_path):
    """NIQE's pristine model (the .mat pyiqa would download) fitted here on three other sharp photos."""
    import scipy.io
    from skimage.data import chelsea, coffee, rocket

    from headsup.metrics.extra import PyiqaMetric

    def rgb(a):
        return torch.from_numpy(a).permute(2, 0, 1).float()[None] / 255

    feats = torch.cat([_niqe_features(rgb(f()[:288, :384])) for f in (coffee, chelsea, rocket)]).numpy()
    params = tmp_path / "niqe_pristine.mat"
    scipy.io.savemat(params, {"mu_prisparam": feats.mean(0)[None], "cov_prisparam": np.cov(feats, rowvar=False)})
    niqe = PyiqaMetric("niqe", str(params))
    assert niqe.unavailable is None and not niqe.needs_hq
    sharp = rgb(astronaut()[:288, 112:400])
    blurred = F.avg_pool2d(sharp, 5, 1, 2, count_include_pad=False)
    assert float(niqe.scores(sharp, blurred, {})[0]) + 2 < float(niqe.scores(blurred, sharp, {})[0])


def test_fid_of_a_set_against_itself_is_zero(fid_file, tmp_path):
    from headsup.metrics.extra import FIDMetric

    # The stand-in's default init shrinks activations to ~1e-8 over Inception's depth, which makes
    # every FID ~0; variance-preserving (He) conv weights keep the features informative.
    state = torch.load(fid_file, weights_only=True)
    gen = torch.Generator().manual_seed(0)
    for key, value in state.items():
        if value.ndim == 4:
            state[key] = torch.randn(value.shape, generator=gen) * (2 / value[0].numel()) ** 0.5
    torch.save(state, tmp_path / "fid_he.pth")
    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    images = torch.stack([img[:, y:y + 64, x:x + 64] for y, x in ((0, 0), (200, 300), (400, 100))])
    fid = FIDMetric(str(tmp_path / "fid_he.pth"))
    same, blurred = fid.make(), fid.make()
    # within half an 8-bit level of HQ is the same 8-bit image (rounded, as saved), not one level darker
    fid.update(same, (images - 0.4 / 255).clamp(0, 1), images, {})
    fid.update(blurred, F.avg_pool2d(images, 5, 1, 2, count_include_pad=False), images, {})
    far = float(blurred.compute())
    assert far > 1e-3
    assert abs(float(same.compute())) < 1e-3 * far


def test_fid_against_a_named_reference_folder(fid_file, tmp_path):
    """With `reference`, SR is compared with the folder's images (features computed once), not the set's HQ:
    the value equals torchmetrics' FID fed those images directly, for each set and method alike."""
    from PIL import Image
    from torchmetrics.image.fid import FrechetInceptionDistance

    from headsup.metrics.extra import FIDMetric

    img = torch.from_numpy(astronaut()).permute(2, 0, 1).float() / 255
    crops = [img[:, y:y + 64, x:x + 64] for y, x in ((0, 0), (200, 300), (400, 100), (100, 400))]
    folder = tmp_path / "ffhq_ref"
    folder.mkdir()
    for i, crop in enumerate(crops[:3]):
        Image.fromarray((crop.permute(1, 2, 0) * 255).round().byte().numpy()).save(folder / f"{i}.png")
    fid = FIDMetric(str(fid_file), reference=str(folder), reference_name="FFHQ-3")
    assert fid.unavailable is None and "'FFHQ-3'" in fid.describe()
    sr = torch.stack([crops[3], crops[0].flip(-1)])
    unrelated_hq = torch.zeros_like(sr)  # ignored: the reference folder is the real distribution
    ours = [fid.make(), fid.make()]
    for metric in ours:
        fid.update(metric, sr, unrelated_hq, {})
    direct = FrechetInceptionDistance(feature=fid.feature)
    direct.update((torch.stack(crops[:3]) * 255).round().to(torch.uint8), real=True)
    direct.update((sr * 255).round().to(torch.uint8), real=False)
    assert all(abs(float(m.compute()) - float(direct.compute())) < 1e-3 * abs(float(direct.compute())) for m in ours)
    assert "not found" in FIDMetric(str(fid_file), reference=str(tmp_path / "missing")).unavailable


def test_lpips_metric_equals_the_lpips_loss(lpips_files):
    from headsup.metrics.extra import LPIPSMetric
    from headsup.objectives.base import StepContext
    from headsup.objectives.reconstruction import LPIPSLoss

    hq = torch.from_numpy(astronaut()[100:148, 180:228]).permute(2, 0, 1).float()[None] / 255
    sr = torch.cat([hq.flip(-1), F.avg_pool2d(hq, 3, 1, 1, count_include_pad=False)])
    hq = hq.repeat(2, 1, 1, 1)
    metric = LPIPSMetric(str(lpips_files[0]), str(lpips_files[1]))
    loss = LPIPSLoss(str(lpips_files[0]), str(lpips_files[1]))
    with torch.no_grad():
        scores = metric.scores(sr, hq, {})
        for k in range(2):
            expected = float(loss.generator_loss(StepContext(lq=hq[k:k + 1], hq=hq[k:k + 1], sr=sr[k:k + 1])))
            assert float(scores[k]) == pytest.approx(expected, rel=1e-6) and expected > 1e-3
