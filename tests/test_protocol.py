"""The paper's metric protocol (benchmarks/protocol_paper.yaml) and the SR-folder-vs-HQ mode of
`headsup test` reproduce OSEDiff's own per-image metric log on RealSR (../shared/data/realsr_osediff).

The default run scores a fixed subset (every 20th image); `-m slow` scores all 100 and the set means.
"""

from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from headsup.cli import main
from tests.conftest import ROOT

REALSR = ROOT.parent / "shared" / "data" / "realsr_osediff"
needs_realsr = pytest.mark.skipif(not (REALSR / "osediff_metrics.log").is_file(),
                                  reason=f"RealSR with OSEDiff's outputs and log not found at {REALSR} "
                                         "(present in CI; a user's clone lacks it)")


def reproduction():
    """benchmarks/realsr_reproduction.py: the log's parser and the NIQE parameter file."""
    spec = importlib.util.spec_from_file_location("realsr_reproduction", ROOT / "benchmarks" / "realsr_reproduction.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def osediff_log() -> dict[str, tuple[float, float, float]]:
    """Image stem -> (PSNR, SSIM, NIQE) of OSEDiff's log."""
    module = reproduction()
    columns = [module.COLUMNS[c] for c in ("psnr_y_nocrop", "ssim_y_nocrop", "niqe")]
    return {stem: tuple(values[c] for c in columns)
            for stem, values in module.read_log(REALSR / "osediff_metrics.log").items()}


def niqe_parameters(tmp_path: Path) -> Path:
    """pyiqa's NIQE parameter file, made from basicsr's (the benchmark's `niqe_from_basicsr`)."""
    try:
        return reproduction().niqe_from_basicsr(tmp_path)
    except FileNotFoundError as err:
        pytest.fail(str(err))


def score_saved_outputs(tmp_path: Path, stems: list[str] | None) -> tuple[dict, dict[str, dict]]:
    """`headsup test` over RealSR's OSEDiff outputs with the paper preset (NIQE from `niqe_parameters`);
    results.json and per_image.csv rows by image stem."""
    folders = {"sr": REALSR / "results_osediff", "hq": REALSR / "test_HR", "lq": REALSR / "test_LR"}
    if stems is not None:  # a subset: links to the real files
        for key, folder in list(folders.items()):
            sub = tmp_path / "subset" / key
            sub.mkdir(parents=True)
            for stem in stems:
                (sub / f"{stem}.png").symlink_to(folder / f"{stem}.png")
            folders[key] = sub
        # an extra saved output without HQ, sorting first: pairing is by name, not by order
        (folders["sr"] / "A_extra.png").symlink_to(REALSR / "results_osediff" / f"{sorted(stems)[-1]}.png")
    preset = yaml.safe_load((ROOT / "benchmarks" / "protocol_paper.yaml").read_text())
    preset["model"]["metrics"]["niqe"]["init_args"]["weights"] = str(niqe_parameters(tmp_path))
    preset["model"]["method"] = "osediff"
    preset["data"] = {"test_sets": [{"name": "realsr", **{k: str(v) for k, v in folders.items()}}], "num_workers": 0,
                      "eval_batch_size": 2}  # per-image rows of a batch of two
    preset["trainer"] = {"default_root_dir": str(tmp_path / "run")}
    config = tmp_path / "protocol.yaml"
    config.write_text(yaml.safe_dump(preset))
    assert main(["test", "--config", str(ROOT / "benchmarks" / "saved_outputs.yaml"), "--config", str(config)]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    with (tmp_path / "run" / "per_image.csv").open(newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    return results, rows


def differences(rows: dict[str, dict], log: dict) -> dict[str, np.ndarray]:
    assert set(rows) <= set(log) and rows
    return {metric: np.array([float(rows[s][column]) - log[s][i] for s in sorted(rows)])
            for i, (metric, column) in enumerate((("psnr", "psnr_y_nocrop"), ("ssim", "ssim_y_nocrop"),
                                                  ("niqe", "niqe")))}


def check_settings(results: dict) -> None:
    settings = results["settings"]
    assert "scored as saved (no colour fix)" in settings["test_crop"]["realsr"]
    assert settings["metrics"]["psnr_y_nocrop"].startswith("pyiqa 0.1.16 'psnr'")
    assert "color_space=ycbcr" in settings["metrics"]["psnr_y_nocrop"]
    assert settings["metrics"]["niqe"].endswith("niqe_modelparameters.mat")
    for name, file in (("musiq", "musiq_koniq_ckpt-e95806b9.pth"), ("maniqa", "MANIQA_PIPAL-ae6d356b.pth"),
                       ("dists", "DISTS_weights-f5e65c96.pth"), ("lpips", "checkpoints/alexnet-owt-7be5be79.pth"),
                       ("fid", "pt_inception-2015-12-05-6726825d.pth"), ("clipiqa", "clip/RN50.pt")):
        assert file in settings["unavailable"][name]  # weights not here: listed with the file each needs
    assert set(results["sets"]["realsr"]) >= {"osediff", "bicubic", "images"}


@needs_realsr
def test_paper_protocol_reproduces_osediff_per_image_log_on_a_realsr_subset(tmp_path):
    """PSNR/SSIM (pyiqa, Y of YCbCr, no border crop) within 1e-3 dB / 1e-4 of the log on every image;
    NIQE within 0.02 per image (float rounding alone moves pyiqa's NIQE that much: README)."""
    log = osediff_log()
    assert len(log) == 100
    stems = sorted(log)[::20]
    results, rows = score_saved_outputs(tmp_path, stems)
    assert sorted(rows) == stems
    diff = differences(rows, log)
    assert np.abs(diff["psnr"]).max() <= 1e-3
    assert np.abs(diff["ssim"]).max() <= 1e-4
    assert np.abs(diff["niqe"]).max() <= 0.02 and np.abs(diff["niqe"]).mean() <= 5e-3
    check_settings(results)
    assert results["sets"]["realsr"]["images"] == len(stems)
    for column in ("psnr_y", "ssim_y", "psnr_y_nocrop", "niqe"):  # the method's rows, not bicubic's
        mean = np.mean([float(rows[stem][column]) for stem in stems])
        assert abs(mean - results["sets"]["realsr"]["osediff"][column]) < 1e-6, column


@pytest.mark.slow
@needs_realsr
def test_paper_protocol_reproduces_osediff_log_on_all_of_realsr(tmp_path):
    """All 100 images: mean absolute differences PSNR <= 1e-3, SSIM <= 1e-4, NIQE <= 2e-3, and the log's
    averages (PSNR 25.1511, SSIM 0.7341, NIQE 5.6476, printed to 4 decimals)."""
    log = osediff_log()
    results, rows = score_saved_outputs(tmp_path, None)
    assert len(rows) == 100
    diff = differences(rows, log)
    assert np.abs(diff["psnr"]).mean() <= 1e-3 and np.abs(diff["ssim"]).mean() <= 1e-4
    assert np.abs(diff["niqe"]).mean() <= 2e-3
    means = results["sets"]["realsr"]["osediff"]
    assert abs(means["psnr_y_nocrop"] - 25.1511) <= 1e-3 and abs(means["ssim_y_nocrop"] - 0.7341) <= 1e-4
    assert abs(means["niqe"] - 5.6476) <= 1e-3
    check_settings(results)


def test_pyiqa_backbones_load_from_a_torch_hub_folder(tmp_path):
    """pyiqa's LPIPS-Alex and DISTS read their torchvision backbones from a given torch hub cache folder
    (random stand-ins under the real file names) instead of downloading. LPIPS-Alex, with the linear
    layers torchmetrics ships, equals torchmetrics' LPIPS-Alex on the same backbone; without the folder
    each is unavailable, naming the file; a pickle that would run code is refused."""
    import torch
    from torchmetrics.functional.image.lpips import _LPIPS
    from torchvision.models import alexnet, vgg16

    from headsup.metrics.extra import PyiqaMetric

    hub = tmp_path / "torch_hub"
    (hub / "checkpoints").mkdir(parents=True)
    torch.manual_seed(0)
    alex = alexnet(weights=None)
    torch.save(alex.state_dict(), hub / "checkpoints" / "alexnet-owt-7be5be79.pth")
    torch.save(vgg16(weights=None).state_dict(), hub / "checkpoints" / "vgg16-397923af.pth")
    import torchmetrics.functional.image.lpips as tm_lpips

    lins = Path(tm_lpips.__file__).parent / "lpips_models" / "alex.pth"  # the LPIPS v0.1 release's alex.pth
    x = torch.rand(2, 3, 64, 64)
    y = (x + 0.1 * torch.randn_like(x)).clamp(0, 1)
    lpips = PyiqaMetric("lpips", torch_hub=str(hub))  # linear layers: torchmetrics' copy by default
    assert lpips.weights == str(lins)
    assert lpips.unavailable is None and lpips.needs_hq
    reference = _LPIPS(pretrained=True, net="alex", pnet_rand=True).eval()
    features = {f"slice{i + 1}.{k}": v for i, (a, b) in enumerate(((0, 2), (2, 5), (5, 8), (8, 10), (10, 12)))
                for k, v in alex.features.state_dict().items() if a <= int(k.split(".")[0]) < b}
    reference.net.load_state_dict(features)
    expected = reference(x, y, normalize=True).flatten()
    assert torch.allclose(lpips.scores(x, y, {}), expected, atol=1e-5) and float(expected.min()) > 0
    dists_weights = tmp_path / "DISTS_weights-f5e65c96.pth"
    torch.save({"alpha": torch.full((1, 1475, 1, 1), 0.1), "beta": torch.full((1, 1475, 1, 1), 0.1)}, dists_weights)
    dists = PyiqaMetric("dists", str(dists_weights), torch_hub=str(hub))
    assert dists.unavailable is None
    assert float(dists.scores(x, x, {}).abs().max()) < 1e-4 and float(dists.scores(x, y, {}).min()) > 0
    missing = PyiqaMetric("dists", str(dists_weights))
    assert "checkpoints/vgg16-397923af.pth" in missing.unavailable and "torch_hub (not given" in missing.unavailable
    torch.save({"alpha": torch.zeros(1), "code": Path("x")}, tmp_path / "evil.pth")  # a Path unpickles only with code
    assert "could run code" in PyiqaMetric("dists", str(tmp_path / "evil.pth"), torch_hub=str(hub)).unavailable
    evil_hub = tmp_path / "evil_hub"
    (evil_hub / "checkpoints").mkdir(parents=True)
    (evil_hub / "checkpoints" / "vgg16-397923af.pth").write_bytes((tmp_path / "evil.pth").read_bytes())
    assert "could run code" in PyiqaMetric("dists", str(dists_weights), torch_hub=str(evil_hub)).unavailable
    import importlib

    for module in ("pyiqa.archs.maniqa_arch", "pyiqa.archs.clipiqa_arch"):  # einops, OpenAI's clip: installed
        importlib.import_module(module)
