"""configs/experiments/osediff_general.yaml is OSEDiff's released recipe, term by term, and
headsup_portrait.yaml keeps every one of those values while adding the HeadsUp terms.

The expected values are OSEDiff's (train_osediff.sh, train_osediff.py's argument defaults,
osediff.py, dataloaders/params_realesrgan.yml), written here from a reading of its release,
independently of headsup's defaults; the resolved config (defaults filled in by the real CLI
parser) is compared with them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from headsup.cli import build_cli

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "configs" / "experiments"
OSEDIFF_NEG_PROMPT = ("painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, "
                      "unreal engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, "
                      "signature, jpeg artifacts, deformed, lowres, over-smooth")
GEN, VSD = "model.generator.init_args", "model.objectives.vsd.init_args"
OSEDIFF = {
    "seed_everything": 123,
    f"{GEN}.timestep": 999,
    f"{GEN}.unet_lora": {"rank": 4, "alpha": 8.0, "targets": "osediff_unet", "prefix": ""},
    f"{GEN}.vae_lora": {"rank": 4, "alpha": 8.0, "targets": "osediff_vae_encoder", "prefix": ""},
    f"{GEN}.train_conv_in": True,
    f"{GEN}.sample_latent": True,               # latent_dist.sample()
    f"{GEN}.train_upsample": "random",          # realesrgan.py: area / bilinear / bicubic per batch
    "model.objectives.mse.class_path": "headsup.objectives.reconstruction.PixelMSE",
    "model.objectives.mse.init_args.weight": 1.0,     # lambda_l2
    "model.objectives.mse.init_args.range": "-1..1",  # F.mse_loss on [-1, 1] images
    "model.objectives.lpips.init_args.weight": 2.0,   # lambda_lpips, LPIPS-VGG
    f"{VSD}.weight": 1.0,                       # lambda_vsd
    f"{VSD}.t_min": 20,                         # randint(20, 980)
    f"{VSD}.t_max": 980,
    f"{VSD}.lr": 5e-5,                          # the reg optimizer reuses learning_rate
    f"{VSD}.weight_decay": 0.01,
    f"{VSD}.grad_clip": 1.0,                    # clip_grad_norm_(model_reg.parameters(), max_grad_norm)
    f"{VSD}.scores.init_args.guidance_scale": 7.5,  # cfg_vsd
    f"{VSD}.scores.init_args.negative_prompt": OSEDIFF_NEG_PROMPT,
    f"{VSD}.scores.init_args.fake_lora": {"rank": 4, "alpha": 8.0, "targets": "osediff_unet", "prefix": "mid_block."},
    "model.optimizer.class_path": "torch.optim.AdamW",
    "model.optimizer.init_args.lr": 5e-5,
    "model.optimizer.init_args.betas": [0.9, 0.999],
    "model.optimizer.init_args.eps": 1e-8,
    "model.optimizer.init_args.weight_decay": 0.01,
    "model.lr_scheduler": None,                 # "constant"
    "model.grad_clip": 1.0,                     # max_grad_norm
    "model.eval_color_fix": "adain",            # test_osediff.py --align_method
    "model.accumulate": 1,                      # --gradient_accumulation_steps=1 in the script
    "trainer.max_steps": 100000,
    "data.batch_size": 4,                       # per GPU (4 GPUs in train_osediff.sh)
    "data.crop_size": 512,
    "data.degradation.class_path": "headsup.degradations.RealESRGANDegradation",
}
REALESRGAN = {  # dataloaders/params_realesrgan.yml
    "scale": 4, "kernel_range": [7, 21], "sinc_prob": 0.1, "blur_sigma": [0.2, 3.0], "resize_prob": [0.2, 0.7, 0.1],
    "resize_range": [0.15, 1.5], "gaussian_noise_prob": 0.5, "noise_range": [1.0, 30.0],
    "poisson_scale_range": [0.05, 3.0], "gray_noise_prob": 0.4, "jpeg_range": [30.0, 95.0], "second_blur_prob": 0.8,
    "blur_sigma2": [0.2, 1.5], "resize_prob2": [0.3, 0.4, 0.3], "resize_range2": [0.3, 1.2],
    "noise_range2": [1.0, 25.0], "poisson_scale_range2": [0.05, 2.5], "jpeg_range2": [30.0, 95.0],
    "final_sinc_prob": 0.8,
}
# What headsup_portrait.yaml changes on purpose (README "OSEDiff parity"): nothing above.
PORTRAIT_EXTRA_TERMS = {"face_mse", "face_lpips", "identity", "face_gan"}


def resolved(name: str, capsys) -> dict:
    """The config as the CLI resolves it (every default filled in)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        build_cli(["fit", "--config", str(EXPERIMENTS / name), "--print_config"])
    out = capsys.readouterr().out
    assert exc.value.code in (0, None), out
    return yaml.safe_load(out)


def lookup(cfg: dict, dotted: str):
    node = cfg
    for key in dotted.split("."):
        node = node[key]
    return node


@pytest.mark.parametrize("name", ["osediff_general.yaml", "headsup_portrait.yaml"])
def test_recipe_is_osediffs_term_by_term(name, capsys):
    cfg = resolved(name, capsys)
    wrong = {k: (lookup(cfg, k), v) for k, v in OSEDIFF.items() if lookup(cfg, k) != v}
    assert not wrong, wrong  # key: (headsup, OSEDiff)
    degradation = cfg["data"]["degradation"]["init_args"]
    assert {k: degradation[k] for k in REALESRGAN} == REALESRGAN
    callbacks = {c["class_path"].rsplit(".", 1)[-1] for c in cfg["trainer"]["callbacks"]}
    terms = set(cfg["model"]["objectives"])
    if name == "osediff_general.yaml":
        assert "TrainableEMA" not in callbacks  # OSEDiff averages no weights
        assert terms == {"mse", "lpips", "vsd"}
    else:  # the HeadsUp additions: face terms, reference conditioning, EMA for evaluation
        assert terms == {"mse", "lpips", "vsd"} | PORTRAIT_EXTRA_TERMS
        assert lookup(cfg, f"{GEN}.reference") is True and "TrainableEMA" in callbacks
        assert lookup(cfg, "model.objectives.face_mse.init_args.range") == "-1..1"
