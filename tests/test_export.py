"""`headsup-tools export` and `SRPipeline`: a trained model leaves its training setup.

The export's LoRA files are checked against diffusers' own loader (`load_lora_adapter` into fresh
diffusers models), the merged folder against a hand-written one-step pass over plain diffusers parts,
and the pipeline against the checkpoint it came from. A full-objective run (teacher, LPIPS, facenet,
discriminator weights) is enhanced with those files deleted and its backbone moved.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from safetensors.torch import load_file, save_file

from headsup.data.io import file_sha256
from headsup.inference.export import CONFIG, CONV_IN, UNET_LORA, VAE_LORA, load_export
from headsup.inference.pipeline import SRPipeline
from headsup.tools import main as tools


@pytest.fixture(scope="module")
def exported(ema_run, tmp_path_factory):
    """The EMA run exported (EMA weights by default) and raw, with the merged diffusers folder."""
    _, _, _, ckpt, _ = ema_run
    tmp = tmp_path_factory.mktemp("export")
    assert tools(["export", str(ckpt.parents[1]), str(tmp / "ema"), "--merged"]) == 0  # a run folder
    assert tools(["export", str(ckpt), str(tmp / "raw"), "--raw"]) == 0
    return tmp / "ema", tmp / "raw"


def _lq() -> torch.Tensor:
    return torch.rand(1, 3, 16, 24, generator=torch.Generator().manual_seed(0))


def test_export_loads_to_the_checkpoints_generator(ema_run, exported):
    _, _, _, ckpt, _ = ema_run
    ema, raw = exported
    config = json.loads((ema / CONFIG).read_text())
    assert config["weights"] == "ema" and json.loads((raw / CONFIG).read_text())["weights"] == "raw"
    assert config["generator"]["reference"] is True and config["generator"]["scale"] == 4
    trained = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["generator"]["init_args"]
    for part in ("unet_lora", "vae_lora"):
        assert {k: config["generator"][part][k] for k in ("rank", "alpha")} == \
            {k: trained[part][k] for k in ("rank", "alpha")}
    assert len(config["backbone"]["fingerprint"]) == 16 and "unet" in config["backbone"]["architecture"]
    assert config["source"]["checkpoint"] == str(ckpt.resolve()) and config["source"]["generator_updates"] == 4
    lq = _lq()
    outputs = {}
    for name, weights, raw_ in (("export", ema, False), ("ckpt", ckpt, False), ("run", ckpt.parents[1], False),
                                ("export_raw", raw, False), ("ckpt_raw", ckpt, True)):
        pipe = SRPipeline.from_pretrained(weights, raw=raw_, color_fix="none")
        assert pipe.generator.reference and not pipe.generator.training
        outputs[name] = pipe(lq)
    assert torch.equal(outputs["export"], outputs["ckpt"]) and torch.equal(outputs["run"], outputs["ckpt"])
    assert torch.equal(outputs["export_raw"], outputs["ckpt_raw"])
    assert (outputs["export"] - outputs["export_raw"]).abs().max() > 1e-2  # EMA and live weights differ
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    for weights in (ema, ckpt):  # the run's colour fix and face settings are the pipeline's defaults
        pipe = SRPipeline.from_pretrained(weights)
        assert pipe.color_fix == state["hyper_parameters"]["eval_color_fix"] == config["eval_color_fix"]
        assert (pipe.reference_size, pipe.max_faces) == tuple(state["faces"][k] for k in ("reference_size",
                                                                                          "max_faces"))
    two = torch.cat([lq, lq.flip(-1)])  # a face-aware model's batch is taken one image at a time
    batch = SRPipeline.from_pretrained(ema, color_fix="none")(two)
    assert torch.equal(batch[:1], outputs["export"]) and batch.shape == (2, *outputs["export"].shape[1:])


def test_ema_weights_only_once_an_update_was_averaged():
    from headsup.models.checkpoint import EMA_KEY, checkpoint_weights

    live, average = torch.zeros(2), torch.ones(2)
    checkpoint = {"state_dict": {"generator.w": live, "generator_updates": torch.tensor(3)},
                  "callbacks": {EMA_KEY: {"shadow": {"w": average}, "updates": 0}}}
    assert torch.equal(checkpoint_weights(checkpoint)["w"], live)  # nothing averaged yet: the live weights
    checkpoint["callbacks"][EMA_KEY]["updates"] = 2
    assert torch.equal(checkpoint_weights(checkpoint)["w"], average)
    assert torch.equal(checkpoint_weights(checkpoint, raw=True)["w"], live)
    assert set(checkpoint_weights(checkpoint)) == {"w"}


def test_lora_files_load_into_fresh_diffusers_models(tiny_sd_dir, exported):
    """diffusers' own loader reproduces the generator's UNet and VAE encoder from the three files."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import load_file

    ema, _ = exported
    generator, _ = load_export(ema)
    generator.eval()
    unet = UNet2DConditionModel.from_pretrained(tiny_sd_dir, subfolder="unet", local_files_only=True)
    conv_in = load_file(ema / CONV_IN)
    old = unet.conv_in  # widened for [z, z_ref, mask] as the model was trained
    unet.conv_in = torch.nn.Conv2d(conv_in["conv_in.weight"].shape[1], old.out_channels, old.kernel_size,
                                   padding=old.padding)
    unet.load_state_dict(conv_in, strict=False)
    unet.load_lora_adapter(ema, weight_name=UNET_LORA, prefix=None)
    vae = AutoencoderKL.from_pretrained(tiny_sd_dir, subfolder="vae", local_files_only=True)
    vae.load_lora_adapter(ema, weight_name=VAE_LORA, prefix=None)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 9, 8, 8, generator=g)
    t = torch.full((2,), 999)
    cond = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    image = torch.rand(1, 3, 32, 32, generator=g) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(unet(x, t, cond).sample, generator.unet(x, t, cond).sample, atol=1e-5)
        assert torch.allclose(vae.encode(image).latent_dist.mode(), generator.vae.encode(image).latent_dist.mode(),
                              atol=1e-5)
        # the LoRA matters: the same UNet with it switched off computes something else
        unet.disable_adapters()
        assert not torch.allclose(unet(x, t, cond).sample, generator.unet(x, t, cond).sample, atol=1e-3)


def test_merged_folder_runs_as_plain_diffusers_parts(exported):
    """OUT/merged: the one-step pass written out by hand over diffusers' UNet and VAE gives the export's image."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    ema, _ = exported
    merged = ema / "merged"
    unet = UNet2DConditionModel.from_pretrained(merged, subfolder="unet", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(merged, subfolder="vae", local_files_only=True)
    abar = DDPMScheduler.from_pretrained(merged, subfolder="scheduler", local_files_only=True).alphas_cumprod[999]
    generator = SRPipeline.from_pretrained(ema).generator
    lq = _lq()
    with torch.no_grad():
        up = generator.upsampled(lq)  # the model's own upsampling: the weights are what is checked
        z = vae.encode(up.clamp(0, 1) * 2 - 1).latent_dist.mode() * vae.config.scaling_factor
        zin = torch.cat([z, torch.zeros(1, unet.config.in_channels - z.shape[1], *z.shape[-2:])], dim=1)
        eps = unet(zin, torch.tensor([999]), generator.prompt_embeds).sample
        z0 = (z - (1 - abar).sqrt() * eps) / abar.sqrt()
        sr = (vae.decode(z0 / vae.config.scaling_factor).sample.clamp(-1, 1) + 1) / 2
        assert torch.allclose(generator(lq), sr, atol=1e-4)  # no faces given: mask and reference are zeros


def test_backbone_of_another_architecture_is_refused(ema_run, exported, tiny_sd_dir, tmp_path):
    _, _, _, ckpt, _ = ema_run
    ema, _ = exported
    other = tmp_path / "other_sd"
    shutil.copytree(tiny_sd_dir, other)
    config = json.loads((other / "vae" / "config.json").read_text())
    trained_with, config["scaling_factor"] = config["scaling_factor"], 0.13025  # same shapes, another latent scale
    (other / "vae" / "config.json").write_text(json.dumps(config))
    expected = "does not match.*" + re.escape(f"vae.scaling_factor: {trained_with!r} recorded, 0.13025 found")
    for weights in (ema, ckpt):  # the checkpoint records its backbone too
        with pytest.raises(ValueError, match=expected):
            SRPipeline.from_pretrained(weights, backbone=other)
    copy = tmp_path / "same_sd"  # the same architecture anywhere else is accepted
    shutil.copytree(tiny_sd_dir, copy)
    assert torch.equal(SRPipeline.from_pretrained(ema, backbone=copy, color_fix="none")(_lq()),
                       SRPipeline.from_pretrained(ema, color_fix="none")(_lq()))


def test_corrupt_or_partial_export_names_the_file(exported, tmp_path, capsys):
    ema, _ = exported

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(ema, folder, ignore=shutil.ignore_patterns("merged"))
        return folder

    missing = copy("missing")
    (missing / VAE_LORA).unlink()
    with pytest.raises(FileNotFoundError, match=f"{VAE_LORA} is missing"):
        SRPipeline.from_pretrained(missing)
    truncated = copy("truncated")
    data = (truncated / UNET_LORA).read_bytes()
    (truncated / UNET_LORA).write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=f"{UNET_LORA} is corrupt"):
        SRPipeline.from_pretrained(truncated)
    bad_json = copy("bad_json")
    (bad_json / CONFIG).write_text("{ not json")
    with pytest.raises(ValueError, match=f"{CONFIG} is not readable JSON"):
        SRPipeline.from_pretrained(bad_json)
    with pytest.raises(FileNotFoundError, match="has no headsup.json"):
        SRPipeline.from_pretrained(tmp_path)
    consistent = copy("missing_key")  # a well-formed file without a tensor the generator needs
    tensors = load_file(consistent / VAE_LORA)
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, consistent / VAE_LORA)
    config = json.loads((consistent / CONFIG).read_text())
    config["files"][VAE_LORA] = file_sha256(consistent / VAE_LORA)
    (consistent / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match=f"{VAE_LORA} has no '{re.escape(dropped)}'"):
        SRPipeline.from_pretrained(consistent)
    save_file({**tensors, "decoder.conv_out.lora_A.weight": tensors[dropped].clone()}, consistent / VAE_LORA)  # extra
    config["files"][VAE_LORA] = file_sha256(consistent / VAE_LORA)
    (consistent / CONFIG).write_text(json.dumps(config))
    with pytest.raises(ValueError, match="has 'decoder.conv_out.lora_A.weight', which the generator"):
        SRPipeline.from_pretrained(consistent)
    with pytest.raises(ValueError, match="not the raw ones"):
        SRPipeline.from_pretrained(ema, raw=True)
    # the command line says the same, and an existing export is not overwritten
    assert tools(["enhance", str(ema), str(tmp_path / "x"), "--weights", str(truncated)]) == 2
    assert f"{UNET_LORA} is corrupt" in capsys.readouterr().err
    before = (ema / CONFIG).read_text()
    assert tools(["export", str(tmp_path / "nowhere.ckpt"), str(ema)]) == 2
    assert tools(["export", str(ema), str(ema)]) == 2  # a folder without checkpoints/last.ckpt
    assert (ema / CONFIG).read_text() == before


def test_overwrite_replaces_only_an_export(ema_run, exported, tmp_path, capsys):
    _, _, _, ckpt, _ = ema_run
    target = tmp_path / "export"
    assert tools(["export", str(ckpt), str(target), "--raw"]) == 0
    capsys.readouterr()
    assert tools(["export", str(ckpt), str(target)]) == 2 and "--overwrite" in capsys.readouterr().err
    assert json.loads((target / CONFIG).read_text())["weights"] == "raw"  # kept
    assert tools(["export", str(ckpt), str(target), "--overwrite"]) == 0
    assert json.loads((target / CONFIG).read_text())["weights"] == "ema" and not list(tmp_path.glob("*.replaced"))
    other = tmp_path / "notes"  # any other folder is never replaced, --overwrite or not
    other.mkdir()
    (other / "mine.txt").write_text("keep me")
    assert tools(["export", str(ckpt), str(other), "--overwrite"]) == 2
    assert "not an export folder" in capsys.readouterr().err and (other / "mine.txt").read_text() == "keep me"
    assert tools(["export", str(ckpt), str(ckpt.parents[1] / "x.pkl"), "--format", "osediff", "--merged"]) == 2


def test_a_merged_or_rescaled_generator_exports_its_trained_weights(tmp_path):
    """The LoRA is exported as trained: after an inference call with merge_lora and lora_scale, the export
    (a model without reference, on a FromConfig backbone) loads to the unmerged generator's output."""
    from headsup.inference.export import export_generator
    from headsup.models.generator import OneStepSR
    from headsup.testing.tiny import TinySD

    generator = OneStepSR(TinySD(), upsample="bicubic").eval()
    with torch.no_grad():
        for name, p in generator.named_parameters():
            if "lora_B" in name or name.startswith("unet.conv_in.base_layer"):  # what training changes
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.05)
        lq = _lq()
        expected = generator(lq)
        generator.merge_lora, generator.lora_scale = True, 0.5
        generator(lq)  # merged at strength 0.5 now
        assert generator._merged and generator._lora_scale_applied == 0.5
        export_generator(generator, tmp_path / "export", weights="raw", merged=True)
        assert generator._merged and generator._lora_scale_applied == 0.5  # its state is put back
        loaded, config = load_export(tmp_path / "export")
        assert config["backbone"]["class"] == "FromConfig" and not config["generator"]["reference"]
        assert config["generator"]["merge_lora"] is True and config["generator"]["lora_scale"] == 0.5
        loaded.merge_lora, loaded.lora_scale = False, 1.0
        # equal up to the rounding of a merge and unmerge (a base weight carrying the LoRA twice is off by ~0.5)
        assert torch.allclose(loaded.eval()(lq), expected, atol=1e-5)


def test_enhance_needs_only_the_backbone(tmp_path, samples_dir, tiny_sd_dir, tiny_weights):
    """A full-objective run (teacher from the backbone, LPIPS, facenet, discriminator weights): with those
    files deleted and the backbone moved, its checkpoint and its export still enhance, and agree."""
    from tests.test_full_objective import build_portrait_set_for, tiny_config
    from headsup.cli import main

    (tmp_path / "weights").mkdir()
    weights = {name: Path(shutil.copy(path, tmp_path / "weights" / path.name)) for name, path in tiny_weights.items()}
    backbone = shutil.copytree(tiny_sd_dir, tmp_path / "sd")
    config = tiny_config(tmp_path, samples_dir, backbone, weights, build_portrait_set_for(samples_dir), max_steps=1,
                         val_check_interval=1000)
    assert str(tmp_path / "weights") in config.read_text()  # the run reads the copies, deleted below
    assert main(["fit", "--config", str(config), "--data.val_sets", "[]", "--data.test_sets", "[]"]) == 0
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert tools(["export", str(ckpt), str(tmp_path / "export")]) == 0
    for path in weights.values():
        path.unlink()
    moved = backbone.rename(tmp_path / "moved_sd")
    photo = tmp_path / "in" / "camera.png"
    photo.parent.mkdir()
    Image.open(samples_dir / "predict" / "camera.png").convert("RGB").crop((0, 0, 32, 24)).save(photo)
    assert tools(["enhance", str(photo), str(tmp_path / "without_backbone"), "--weights", str(ckpt)]) == 2
    for name, weights_ in (("from_ckpt", ckpt), ("from_export", tmp_path / "export")):
        assert tools(["enhance", str(photo.parent), str(tmp_path / name), "--weights", str(weights_), "--backbone",
                      str(moved), "--workers", "0", "--device", "cpu"]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n / "camera.png")) for n in ("from_ckpt", "from_export"))
    assert a.shape == (96, 128, 3) and np.array_equal(a, b)


def test_osediff_format_refuses_what_osediff_cannot_run(ema_run, tmp_path, capsys):
    _, _, _, ckpt, _ = ema_run
    assert tools(["export", str(ckpt), str(tmp_path / "osediff.pkl"), "--format", "osediff"]) == 2
    assert "no reference conditioning" in capsys.readouterr().err and not (tmp_path / "osediff.pkl").exists()


def test_pipeline_precision_and_options(exported):
    """bf16 autocast from Python: close to fp32, not equal (it did run in bf16); run-time options are set on
    the generator, unknown ones refused."""
    ema, _ = exported
    lq = _lq()
    full = SRPipeline.from_pretrained(ema, color_fix="none")(lq)
    pipe = SRPipeline.from_pretrained(ema, color_fix="none", precision="bf16-mixed", lora_scale=0.5)
    assert pipe.generator.lora_scale == 0.5
    pipe.set_options(lora_scale=1.0)
    half = pipe(lq)
    assert not torch.equal(half, full) and (half - full).abs().mean() < 0.02
    with pytest.raises(ValueError, match="unknown run-time option 'tile'"):
        pipe.set_options(tile=64)
    with pytest.raises(ValueError, match="precision must be"):
        SRPipeline(pipe.generator, precision="fp8")
