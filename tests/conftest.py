"""Offline, CPU-only fixtures shared by the test suite."""

from __future__ import annotations

import importlib.util
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["OMP_NUM_THREADS"] = "1"  # also for the processes tests start

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# One torch thread per test process, whether the suite runs in one process or in pytest-xdist workers
# (`make test`: two), and in the processes tests start (notebook kernels, CLI runs): two threads per
# worker on two cores oversubscribe OpenMP, which made the suite slower than one process. Float
# reductions then also run in the same order everywhere, so seeded training reaches the same numbers
# (tests/test_learning.py's bars were measured with one thread).
torch.set_num_threads(1)


def basicsr_reference():
    """benchmarks/realesrgan_reference.py, which makes basicsr 1.4.2 importable (its per-image
    Real-ESRGAN recipe). Without basicsr: a skip, or a failure under CI, where `make test` installs it."""
    if importlib.util.find_spec("basicsr") is None:  # not importorskip: basicsr's import fails before the shim
        (pytest.fail if os.environ.get("CI") else pytest.skip)("basicsr 1.4.2 is not installed (make install adds it; "
                    "pip install --no-deps --no-build-isolation basicsr==1.4.2)")
    path = ROOT / "benchmarks" / "realesrgan_reference.py"
    spec = importlib.util.spec_from_file_location("realesrgan_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
QUICKSTART = ROOT / "configs" / "experiments" / "quickstart.yaml"


@pytest.fixture(scope="session")
def samples_dir(tmp_path_factory) -> Path:
    """The package-shipped photos as train/test folders."""
    from headsup.tools import write_samples

    out = tmp_path_factory.mktemp("samples")
    write_samples(out)
    return out


@pytest.fixture(scope="session")
def tiny_sd_dir(tmp_path_factory, samples_dir) -> Path:
    """A briefly pretrained tiny backbone saved as a diffusers folder (shorter than the quickstart's)."""
    from headsup.testing.tiny import pretrain_tiny_backbone

    torch.manual_seed(0)
    return pretrain_tiny_backbone(
        samples_dir / "train", tmp_path_factory.mktemp("tiny_sd"), vae_steps=300, unet_steps=100, log_every=0
    )


@pytest.fixture(scope="session")
def lpips_files(tmp_path_factory) -> tuple[Path, Path]:
    """Random VGG16 and LPIPS linear weights saved where real weights would be."""
    from torchvision.models import vgg16

    tmp = tmp_path_factory.mktemp("lpips")
    torch.manual_seed(0)
    torch.save(vgg16(weights=None).features.state_dict(prefix="features."), tmp / "vgg16.pth")
    lins = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1) for i, c in enumerate((64, 128, 256, 512, 512))}
    torch.save(lins, tmp / "lpips_vgg.pth")
    return tmp / "vgg16.pth", tmp / "lpips_vgg.pth"


@pytest.fixture(scope="session")
def facenet_file(tmp_path_factory) -> Path:
    """A random InceptionResnetV1 state dict saved where the VGGFace2 weights would be."""
    from facenet_pytorch import InceptionResnetV1

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("facenet") / "facenet.pt"
    torch.save(InceptionResnetV1(pretrained=None).state_dict(), path)
    return path


@pytest.fixture(scope="session")
def fid_file(tmp_path_factory) -> Path:
    """Torch-fidelity's FID Inception with random weights, saved where the real file would be."""
    from headsup.testing.tiny import _random_fid_inception

    path = tmp_path_factory.mktemp("fid") / "fid_inception.pth"
    torch.save(_random_fid_inception(), path)
    return path


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> dict[str, Path]:
    """The random stand-in weight files of `headsup-tools tiny-weights` (written once per session)."""
    from headsup.testing.tiny import write_tiny_weights

    return write_tiny_weights(tmp_path_factory.mktemp("tiny_weights"))


def make_config(tmp_path: Path, samples: Path, backbone: Path, test_crop: int = 64, **trainer) -> Path:
    """The quickstart config with every path moved under tmp_path and trainer overrides applied."""
    cfg = yaml.safe_load(QUICKSTART.read_text())
    run = tmp_path / "run"
    cfg["trainer"].update(default_root_dir=str(run), **trainer)
    cfg["trainer"]["logger"]["init_args"].update(save_dir=str(tmp_path), name="run")
    cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] = str(run / "checkpoints")
    cfg["model"]["generator"]["init_args"]["backbone"]["init_args"]["path"] = str(backbone)
    cfg["data"]["train"][0]["hq"] = str(samples / "train")
    cfg["data"]["val_sets"][0]["hq"] = str(samples / "test" / "portrait")
    cfg["data"]["test_sets"][0]["hq"] = str(samples / "test" / "portrait")
    cfg["data"]["test_sets"][1]["hq"] = str(samples / "test" / "general")
    for spec in cfg["data"]["test_sets"]:
        spec["center_crop"] = test_crop
    cfg["data"]["num_workers"] = 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def ema_run(tmp_path_factory, samples_dir, tiny_sd_dir):
    """A few updates of a reference model with TrainableEMA (its EMA and live weights far apart); its LQ-only
    test set is one small photo: (folder, config, the config without the EMA callback, last.ckpt, the photo)."""
    from PIL import Image

    from headsup.cli import main

    tmp = tmp_path_factory.mktemp("ema_run")
    photos = tmp / "photos"
    photos.mkdir()
    coffee = Image.open(samples_dir / "test" / "general" / "coffee.png").convert("RGB")  # no face: same inputs
    coffee.resize((48, 32), Image.Resampling.BICUBIC).save(photos / "coffee.png")
    config = make_config(tmp, samples_dir, tiny_sd_dir, max_steps=4, val_check_interval=1000)
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["generator"]["init_args"]["reference"] = True
    cfg["model"]["optimizer"]["init_args"]["lr"] = 1.0e-2  # EMA and live weights far apart after 4 updates
    cfg["data"].update(val_sets=[], test_sets=[{"name": "real", "lq": str(photos), "kind": "general"}],
                       crop_size=16)
    without_ema = tmp / "without_ema.yaml"  # the same run's config as a user might write it for predict
    without_ema.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cfg["trainer"]["callbacks"].append({"class_path": "headsup.callbacks.TrainableEMA", "init_args": {"decay": 0.9}})
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["fit", "--config", str(config)]) == 0
    return tmp, config, without_ema, tmp / "run" / "checkpoints" / "last.ckpt", photos / "coffee.png"
