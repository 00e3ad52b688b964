"""headsup-tools import-osediff: a file in the layout of OSEDiff's `osediff.pkl`, imported, runs as OSEDiff's
inference (osediff.py `OSEDiff_test`, test_osediff.py), loaded as `headsup-tools enhance` loads checkpoints.

The stand-in release is made the way OSEDiff makes its own: its module-name rules on the tiny UNet/VAE,
three UNet adapters and one VAE adapter added with diffusers' `add_adapter`, conv_in trained, saved as its
`save_model` lays the dict out. The backbone is the tiny diffusers folder with SD 2.1-base's scheduler
config (no x0 clipping), the configuration OSEDiff runs on.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.data import astronaut

import headsup.system  # noqa: F401 - imported first for its warning filters (checkpoints hold trainable weights only)
from headsup.inference.pipeline import generator_from_checkpoint
from headsup.models.lora import resolve_targets
from headsup.models.osediff_import import REQUIRED_KEYS, UNET_ADAPTERS, import_osediff, read_osediff_checkpoint
from headsup.tools import main as tools

# the substrings OSEDiff's initialize_unet / initialize_vae look for in parameter names (facts of its release)
UNET_PATTERNS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut", "conv_out",
                 "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj")
VAE_PATTERNS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v", "to_out.0")
# stabilityai/stable-diffusion-2-1-base scheduler/scheduler_config.json
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085,
    "clip_sample": False, "num_train_timesteps": 1000, "prediction_type": "epsilon", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
}
RANK = 4


def osediff_unet_lists(unet) -> dict[str, list[str]]:
    """OSEDiff's UNet rule: each weight (not bias, not norm) containing a pattern goes to one list, by its place."""
    lists = {"encoder": [], "decoder": [], "others": []}
    for name, _ in unet.named_parameters():
        if "bias" in name or "norm" in name or not any(p in name for p in UNET_PATTERNS):
            continue
        part = ("encoder" if "down_blocks" in name or "conv_in" in name
                else "decoder" if "up_blocks" in name or "conv_out" in name else "others")
        lists[part].append(name.replace(".weight", ""))
    return lists


def osediff_vae_list(vae) -> list[str]:
    """OSEDiff's VAE rule: one entry per (weight, pattern) hit, so names repeat; quant_conv once per pattern."""
    names = []
    for name, _ in vae.named_parameters():
        if "bias" in name or "norm" in name:
            continue
        quant = "quant_conv" in name and "post_quant_conv" not in name
        names += [name.replace(".weight", "") for p in VAE_PATTERNS if (p in name and "encoder" in name) or quant]
    return names


@pytest.fixture(scope="module")
def release(tmp_path_factory, tiny_sd_dir):
    """The tiny backbone as SD 2.1-base is laid out, the peft-wrapped networks OSEDiff's code builds on it
    with random non-zero LoRA and conv_in weights, and the .pkl it would save from them."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from peft import LoraConfig

    tmp = tmp_path_factory.mktemp("osediff")
    backbone = tmp / "sd21_base"
    shutil.copytree(tiny_sd_dir, backbone)
    (backbone / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_BASE_SCHEDULER))
    unet = UNet2DConditionModel.from_pretrained(backbone, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(backbone, subfolder="vae", local_files_only=True)
    unet_lists, vae_list = osediff_unet_lists(unet), osediff_vae_list(vae)
    presets = {"unet": set(resolve_targets(unet, "osediff_unet")),
               "vae": set(resolve_targets(vae, "osediff_vae_encoder"))}
    for part, modules in unet_lists.items():
        unet.add_adapter(LoraConfig(r=RANK, init_lora_weights="gaussian", target_modules=modules),
                         adapter_name=f"default_{part}")
    unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    vae.add_adapter(LoraConfig(r=RANK, init_lora_weights="gaussian", target_modules=vae_list),
                    adapter_name="default_encoder")
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in [*unet.named_parameters(), *vae.named_parameters()]:
            if "lora" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif name.startswith("conv_in.base_layer"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    pkl = tmp / "osediff.pkl"
    torch.save({
        "unet_lora_encoder_modules": unet_lists["encoder"], "unet_lora_decoder_modules": unet_lists["decoder"],
        "unet_lora_others_modules": unet_lists["others"], "vae_lora_encoder_modules": vae_list,
        "rank_unet": RANK, "rank_vae": RANK,
        "state_dict_unet": {k: v for k, v in unet.state_dict().items() if "lora" in k or "conv_in" in k},
        "state_dict_vae": {k: v for k, v in vae.state_dict().items() if "lora" in k},
    }, pkl)
    return SimpleNamespace(backbone=backbone, pkl=pkl, unet=unet.eval(), vae=vae.eval(), unet_lists=unet_lists,
                           vae_list=vae_list, presets=presets)


def lq_image() -> np.ndarray:
    """A 64 x 64 8-bit LQ: the astronaut's face (256 px crop) downscaled x4 by Pillow."""
    return np.asarray(Image.fromarray(astronaut()[0:256, 128:384]).resize((64, 64), Image.Resampling.BICUBIC))


@torch.no_grad()
def osediff_inference(release, up8: np.ndarray, prompt: str = "") -> torch.Tensor:
    """OSEDiff_test's forward on the Pillow-upsampled 8-bit image: encode, one UNet call at t = 999 with the
    prompt's embedding, x0 through DDPMScheduler.step (diffusers 0.25's previous step, -1, as OSEDiff pins
    it), decode, clamp. The posterior mean stands for OSEDiff's unseeded posterior sample. In [0, 1]."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(release.backbone, subfolder="tokenizer", local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(release.backbone, subfolder="text_encoder", local_files_only=True)
    ids = tokenizer([prompt], max_length=tokenizer.model_max_length, padding="max_length", truncation=True,
                    return_tensors="pt").input_ids
    prompt_embeds = encoder(ids)[0]
    scheduler = DDPMScheduler.from_pretrained(release.backbone, subfolder="scheduler", local_files_only=True)
    scheduler.set_timesteps(1)
    scheduler.previous_timestep = lambda t: t - scheduler.config.num_train_timesteps  # diffusers 0.25
    x = torch.from_numpy(up8.copy()).permute(2, 0, 1).float()[None] / 255 * 2 - 1
    sf = release.vae.config.scaling_factor
    z = release.vae.encode(x).latent_dist.mode() * sf
    t = torch.tensor([999])
    eps = release.unet(z, t, encoder_hidden_states=prompt_embeds).sample
    z0 = scheduler.step(eps, t, z, generator=torch.Generator().manual_seed(0)).prev_sample
    return (release.vae.decode(z0 / sf).sample.clamp(-1, 1) + 1) / 2


def test_osediff_adapters_are_one_adapter_on_the_presets(release):
    """OSEDiff's three UNet module lists are disjoint and together are what `osediff_unet` selects; its VAE
    list (with repeats) is what `osediff_vae_encoder` selects: the import can use the presets."""
    lists = release.unet_lists
    union = [m for modules in lists.values() for m in modules]
    assert len(union) == len(set(union)) and all(lists.values())
    assert set(union) == release.presets["unet"]
    assert len(release.vae_list) > len(set(release.vae_list))  # OSEDiff's rule repeats names
    ckpt = read_osediff_checkpoint(release.pkl)
    assert ckpt.vae_modules == list(dict.fromkeys(release.vae_list))
    assert set(ckpt.vae_modules) == release.presets["vae"]


def test_osediff_lists_on_sd21_base_are_the_presets():
    """The same on SD 2.1-base's architecture (meta device, no weights): 94 + 148 + 16 disjoint UNet modules
    (258, `osediff_unet`), 65 VAE entries naming 32 modules (`osediff_vae_encoder`)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from headsup.models.backbone import SD21_BASE_UNET, SD21_BASE_VAE

    with torch.device("meta"):
        unet, vae = UNet2DConditionModel(**SD21_BASE_UNET), AutoencoderKL(**SD21_BASE_VAE)
    lists = osediff_unet_lists(unet)
    union = [m for modules in lists.values() for m in modules]
    assert [len(m) for m in lists.values()] == [94, 148, 16] and len(set(union)) == 258
    assert set(union) == set(resolve_targets(unet, "osediff_unet"))
    vae_list = osediff_vae_list(vae)
    assert (len(vae_list), len(set(vae_list))) == (65, 32)
    assert set(vae_list) == set(resolve_targets(vae, "osediff_vae_encoder"))


def test_imported_checkpoint_runs_as_osediff_inference(release, tmp_path, capsys):
    direct = import_osediff(release.pkl, tmp_path / "direct.ckpt", release.backbone)
    out = tmp_path / "osediff.ckpt"
    args = ["import-osediff", str(release.pkl), str(out), "--backbone", str(release.backbone)]
    assert tools(args) == 0 and out.is_file()

    lq8 = lq_image()
    up8 = np.asarray(Image.fromarray(lq8).resize((256, 256), Image.Resampling.BICUBIC))  # test_osediff.py's upsampling
    reference = osediff_inference(release, up8)
    gen = generator_from_checkpoint(out)[0].eval()
    gen.tiling = "never"
    lq = torch.from_numpy(lq8.copy()).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        ours = gen(lq)
        pillow = torch.from_numpy(up8.copy()).permute(2, 0, 1).float()[None] / 255
        up = gen.upsampled(lq)
        gen.upsampled = lambda _: pillow  # the model itself, on exactly OSEDiff's upsampled input
        same_input = gen(lq)
    assert same_input.shape == reference.shape == (1, 3, 256, 256)
    assert (same_input - reference).abs().max() <= 1e-5
    # headsup's pil_bicubic equals Pillow's 8-bit resize up to one level at rounding ties, nothing more
    assert (up - pillow).abs().max() * 255 <= 1 + 1e-4 and ((up - pillow).abs() > 1e-6).float().mean() < 0.01
    assert (ours - reference).abs().max() <= 5e-3 and (ours - reference).abs().mean() <= 1e-4
    with torch.no_grad():  # the imported weights matter: without the adapters the output is far from it
        release.unet.disable_adapters(), release.vae.disable_adapters()
        try:
            plain = osediff_inference(release, up8)
        finally:
            release.unet.enable_adapters(), release.vae.enable_adapters()
            release.unet.set_adapter(["default_encoder", "default_decoder", "default_others"])
    assert (plain - reference).abs().max() > 0.05

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(lq8).save(src / "face.png")
    assert tools(["enhance", str(src), str(tmp_path / "enhanced"), "--weights", str(out), "--workers", "0",
                  "--device", "cpu", "--color-fix", "none"]) == 0
    enhanced = np.asarray(Image.open(tmp_path / "enhanced" / "face.png")).astype(np.float64)
    assert np.abs(enhanced - ours[0].permute(1, 2, 0).numpy() * 255).max() <= 0.5 + 1e-3

    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (direct, out))
    assert a["hyper_parameters"] == b["hyper_parameters"] and a["state_dict"].keys() == b["state_dict"].keys()
    assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"])
    init = b["hyper_parameters"]["generator"]["init_args"]
    assert (init["unet_lora"]["targets"], init["vae_lora"]["targets"]) == ("osediff_unet", "osediff_vae_encoder")
    assert (init["unet_lora"]["rank"], init["unet_lora"]["alpha"], init["upsample"]) == (RANK, 8.0, "pil_bicubic")
    capsys.readouterr()
    assert tools(args) == 2 and "exists" in capsys.readouterr().err  # OUT is kept without --overwrite
    assert tools(args + ["--overwrite"]) == 0


def test_module_sets_other_than_the_presets_are_imported_by_name(release, tmp_path):
    """A release whose lists differ from what the presets select (here: no LoRA on conv_out) is imported with
    its own module names as targets, and the loaded generator adapts exactly those."""
    def without_conv_out(raw):
        raw["unet_lora_decoder_modules"].remove("conv_out")
        raw["state_dict_unet"] = {k: v for k, v in raw["state_dict_unet"].items() if not k.startswith("conv_out.")}

    pkl = _write_variant(release, tmp_path, "no_conv_out", without_conv_out)
    out = import_osediff(pkl, tmp_path / "no_conv_out.ckpt", release.backbone)
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    targets = ckpt["hyper_parameters"]["generator"]["init_args"]["unet_lora"]["targets"]
    stored = {m for part in ("encoder", "decoder", "others") for m in release.unet_lists[part]} - {"conv_out"}
    assert isinstance(targets, list) and set(targets) == stored
    assert ckpt["osediff_import"]["targets"] == {"unet": "the stored module names", "vae": "osediff_vae_encoder"}
    gen = generator_from_checkpoint(out)[0]
    assert set(gen.unet_lora_modules) == stored
    assert torch.equal(gen.unet.down_blocks[0].resnets[0].conv1.lora_A["default"].weight,
                       release.unet.down_blocks[0].resnets[0].conv1.lora_A["default_encoder"].weight)


def test_osediff_format_export_round_trips(release, tmp_path):
    """OSEDiff's .pkl -> a headsup checkpoint -> `export --format osediff`: the same release (every tensor under
    its key, the same module lists); imported again, the same generator."""
    ckpt = import_osediff(release.pkl, tmp_path / "imported.ckpt", release.backbone)
    again = tmp_path / "again.pkl"
    assert tools(["export", str(ckpt), str(again), "--format", "osediff"]) == 0
    a, b = (torch.load(p, map_location="cpu", weights_only=True) for p in (release.pkl, again))
    assert set(b) == set(REQUIRED_KEYS) and (b["rank_unet"], b["rank_vae"]) == (RANK, RANK)
    for key in UNET_ADAPTERS.values():
        assert b[key] == a[key], key
    assert set(b["vae_lora_encoder_modules"]) == set(a["vae_lora_encoder_modules"])
    for part in ("state_dict_unet", "state_dict_vae"):
        assert a[part].keys() == b[part].keys(), part
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    first = generator_from_checkpoint(ckpt)[0]
    second = generator_from_checkpoint(import_osediff(again, tmp_path / "again.ckpt", release.backbone))[0]
    assert all(torch.equal(p, dict(second.named_parameters())[n]) for n, p in first.named_parameters())


def _write_variant(release, tmp_path, name: str, change) -> Path:
    raw = torch.load(release.pkl, map_location="cpu", weights_only=True)
    change(raw)
    path = tmp_path / f"{name}.pkl"
    torch.save(raw, path)
    return path


def _rename_module(raw: dict, old: str, new: str) -> None:
    raw["unet_lora_encoder_modules"] = [new if m == old else m for m in raw["unet_lora_encoder_modules"]]
    raw["state_dict_unet"] = {k.replace(old + ".", new + ".", 1) if k.startswith(old + ".") else k: v
                              for k, v in raw["state_dict_unet"].items()}


def _drop_lora_b(raw: dict) -> None:
    key = next(k for k in raw["state_dict_unet"] if ".lora_B.default_decoder." in k)
    del raw["state_dict_unet"][key]


ERRORS = {
    "missing_key": (lambda raw: raw.pop("rank_vae"), "key 'rank_vae' is missing"),
    "wrong_rank": (lambda raw: raw.update(rank_unet=8), "has rank 4, but rank_unet is 8"),
    "unknown_module": (lambda raw: _rename_module(raw, "down_blocks.0.resnets.0.conv1",
                                                  "down_blocks.7.resnets.0.conv1"),
                       "'down_blocks.7.resnets.0.conv1' (1 in all) is not a Linear/Conv2d layer of the backbone's "
                       "UNet"),
    "overlap": (lambda raw: raw["unet_lora_others_modules"].append(raw["unet_lora_encoder_modules"][1]),
                "is listed in both unet_lora_encoder_modules and unet_lora_others_modules"),
    "missing_tensor": (_drop_lora_b, "has no '"),
    "unexpected_entry": (lambda raw: raw["state_dict_vae"].update({"decoder.skip_conv_1.weight": torch.ones(1)}),
                         "unexpected entry 'decoder.skip_conv_1.weight'"),
    "other_width": (lambda raw: raw["state_dict_unet"].update({"conv_in.base_layer.bias": torch.zeros(64)}),
                    "state_dict_unet['conv_in.base_layer.bias'] has shape (64,)"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_import_errors_name_the_file_and_the_problem(release, tmp_path, capsys, case):
    change, message = ERRORS[case]
    pkl = _write_variant(release, tmp_path, case, change)
    out = tmp_path / "out.ckpt"
    with pytest.raises(ValueError, match=re.escape(str(pkl))) as err:
        import_osediff(pkl, out, release.backbone)
    assert message in str(err.value)
    assert tools(["import-osediff", str(pkl), str(out), "--backbone", str(release.backbone)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_files_that_are_not_osediff_checkpoints_are_refused(release, tmp_path):
    not_dict, garbage, code = tmp_path / "list.pkl", tmp_path / "garbage.pkl", tmp_path / "code.pkl"
    torch.save([1, 2], not_dict)
    garbage.write_bytes(b"garbage")
    torch.save({"path": Path("x")}, code)  # an object tensors-only loading refuses
    cases = ((not_dict, "holds a list, not a dict"), (garbage, "not a"), (code, "holds more than tensors"))
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            import_osediff(path, tmp_path / "out.ckpt", release.backbone)
    with pytest.raises(FileNotFoundError, match="none.pkl"):
        import_osediff(tmp_path / "none.pkl", tmp_path / "out.ckpt", release.backbone)
    clipping = tmp_path / "clipping_backbone"
    shutil.copytree(release.backbone, clipping)
    (clipping / "scheduler" / "scheduler_config.json").write_text(json.dumps({**SD21_BASE_SCHEDULER,
                                                                              "clip_sample": True}))
    with pytest.raises(ValueError, match="clip_sample"):
        import_osediff(release.pkl, tmp_path / "out.ckpt", clipping)
    assert not (tmp_path / "out.ckpt").exists()


def test_enhance_prompts_in_osediffs_format_match_osediff(release, tmp_path):
    """test_osediff.py's prompt is f"{tags}, {prompt},": tags beside the input plus the user's prompt."""
    out = import_osediff(release.pkl, tmp_path / "osediff.ckpt", release.backbone)
    lq8 = lq_image()
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(lq8).save(src / "face.png")
    (src / "face.txt").write_text("woman, helmet")
    args = ["enhance", str(src), str(tmp_path / "out"), "--weights", str(out), "--workers", "0", "--device", "cpu",
            "--color-fix", "none", "--prompts", "txt", "--prompt", "sharp", "--prompt-format", "{tags}, {prompt},"]
    assert tools(args) == 0
    enhanced = np.asarray(Image.open(tmp_path / "out" / "face.png")).astype(np.float64) / 255
    up8 = np.asarray(Image.fromarray(lq8).resize((256, 256), Image.Resampling.BICUBIC))
    reference = osediff_inference(release, up8, "woman, helmet, sharp,")[0].permute(1, 2, 0).numpy()
    other = osediff_inference(release, up8, "")[0].permute(1, 2, 0).numpy()
    assert np.abs(enhanced - reference).max() <= 5e-3 + 0.5 / 255  # Pillow-compatible upsampling, 8-bit output
    assert np.abs(enhanced - other).max() > 0.01  # the prompt matters (0.019 here; the match bound is 0.007)


def test_osediff_preset_runs_the_import_as_a_method(release, tmp_path, monkeypatch):
    """configs/methods/osediff.yaml as shipped (weights/osediff/osediff.ckpt, relative to the working
    directory): `headsup test` scores the imported OSEDiff as method "osediff" with OSEDiff's AdaIN
    colour fix, and its numbers are those of the imported generator's own output."""
    from headsup.cli import main
    from headsup.inference.colorfix import color_fix
    from headsup.metrics.full_reference import psnr

    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights" / "osediff").mkdir(parents=True)
    ckpt = import_osediff(release.pkl, tmp_path / "weights" / "osediff" / "osediff.ckpt", release.backbone)
    for folder, image in (("lq", lq_image()), ("hq", astronaut()[0:256, 128:384])):
        (tmp_path / "set" / folder).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "set" / folder / "face.png")
    shared = tmp_path / "shared.yaml"
    shared.write_text(json.dumps({
        "trainer": {"accelerator": "cpu"}, "results": {"save_images": False},
        "data": {"num_workers": 0, "test_sets": [{"name": "face", "lq": "set/lq", "hq": "set/hq"}]}}))
    assert main(["test", "--config", str(root / "configs" / "methods" / "osediff.yaml"), "--config", str(shared)]) == 0
    results = json.loads((tmp_path / "runs" / "compare" / "osediff" / "results.json").read_text())
    assert results["method"] == "osediff" and results["settings"]["color_fix"] == "adain"
    gen = generator_from_checkpoint(ckpt)[0].eval()
    lq = torch.from_numpy(lq_image().copy()).permute(2, 0, 1).float()[None] / 255
    hq = torch.from_numpy(astronaut()[0:256, 128:384].copy()).permute(2, 0, 1).float()[None] / 255
    with torch.no_grad():
        expected = float(psnr(color_fix(gen(lq), lq, "adain"), hq, crop_border=4))
    assert abs(results["sets"]["face"]["osediff"]["psnr_y"] - expected) < 1e-4
