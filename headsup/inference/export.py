"""A trained generator as files other tools load, and back: the export folder.

    unet_lora.safetensors  the UNet's LoRA as diffusers' `save_lora_adapter` writes it: peft's key names
                           without the adapter name, its `LoraConfig` (rank, alpha, targets) in the file's
                           metadata. `unet.load_lora_adapter(folder, weight_name="unet_lora.safetensors",
                           prefix=None)` loads it into a diffusers UNet.
    vae_lora.safetensors   the VAE encoder's LoRA, the same way (`AutoencoderKL.load_lora_adapter`).
    conv_in.safetensors    the UNet's input convolution (`conv_in.weight`, `conv_in.bias`), which OSEDiff's
                           recipe trains fully; with reference conditioning it has 2C + 1 input channels
                           (widen the UNet's conv_in before loading it).
    headsup.json           the generator's settings (scale, timestep, LoRA specs, upsampling, reference
                           conditioning, run-time options), the backbone it was trained on (its prompt, the
                           path it had, and its architecture with a fingerprint), which weights were exported
                           (EMA or raw), the evaluation colour fix, and each file's sha256.

The backbone itself never travels: loading rebuilds the generator on a local backbone folder (the
recorded path, or another given one) and refuses one whose architecture differs from the recorded
one. `--format osediff` (OSEDiff's `.pkl`) lives beside OSEDiff's importer in
`headsup.models.osediff_import`; this module holds the headsup folder format, writer and reader together.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from headsup.data.io import file_sha256
from headsup.models.backbone import BackboneSource, DiffusersFolder, FromConfig, fingerprint
from headsup.models.generator import OneStepSR
from headsup.models.runtime import INFERENCE_OPTIONS
from headsup.models.lora import LoRASpec

FORMAT, VERSION = "headsup-export", 1
CONFIG = "headsup.json"
UNET_LORA, VAE_LORA, CONV_IN = "unet_lora.safetensors", "vae_lora.safetensors", "conv_in.safetensors"
ADAPTER = "default"  # the adapter name `add_lora` gives the generator's LoRA
# the generator settings an export records (besides the backbone): the method's and the run-time options
GENERATOR_SETTINGS = tuple(dict.fromkeys(("scale", "timestep", "unet_lora", "vae_lora", "train_conv_in", "sample_latent",
                                           "upsample", "train_upsample", "reference", "reference_dropout",
                                           *INFERENCE_OPTIONS)))
BACKBONES = {"DiffusersFolder": DiffusersFolder, "FromConfig": FromConfig}
# what a backbone keeps of its recorded arguments when it is loaded from another folder
FOLDER_ARGS = ("prompt", "max_cached_prompts")


def export_name(parameter: str) -> tuple[str, str]:
    """(file, key) of a trained generator parameter in an export: LoRA factors under peft's names without
    the adapter name (as `save_lora_adapter` writes them), conv_in's base weights as `conv_in.weight`/`.bias`.

    Raises:
        ValueError: a parameter the export format has no place for.
    """
    part, _, rest = parameter.partition(".")
    if part in ("unet", "vae") and ".lora_" in rest:
        return (UNET_LORA if part == "unet" else VAE_LORA), rest.replace(f".{ADAPTER}.", ".")
    if part == "unet" and rest.startswith("conv_in.") and ".lora_" not in rest:
        return CONV_IN, "conv_in." + rest.removeprefix("conv_in.").removeprefix("base_layer.")
    raise ValueError(f"the generator's '{parameter}' is trained, but an export has no place for it")


def exported_parameters(generator: OneStepSR) -> dict[str, nn.Parameter]:
    """The generator parameters an export holds: every LoRA factor and conv_in (trained or not)."""
    return {n: p for n, p in generator.named_parameters()
            if ".lora_" in n or n.startswith("unet.conv_in.") and ".lora_" not in n}


def backbone_spec(source: BackboneSource) -> dict:
    """How `source` is rebuilt: its class name and constructor arguments."""
    if isinstance(source, DiffusersFolder):
        return {"class": "DiffusersFolder", "init_args": {"path": str(Path(source.path).expanduser().resolve()),
                                                          "prompt": source.prompt,
                                                          "max_cached_prompts": source.max_cached}}
    if isinstance(source, FromConfig):  # subclasses (the tiny stand-in) are their configs
        return {"class": "FromConfig", "init_args": {"unet": source.unet, "vae": source.vae,
                                                     "scheduler": source.scheduler,
                                                     "prompt_length": source.prompt_length, "seed": source.seed}}
    raise ValueError(f"an export records DiffusersFolder or FromConfig backbones, not {type(source).__name__}")


def generator_settings(generator: OneStepSR) -> dict:
    """The generator's constructor arguments other than the backbone (JSON-ready)."""
    settings = {k: getattr(generator, k) for k in GENERATOR_SETTINGS}
    settings.update(unet_lora=asdict(generator.unet_lora), vae_lora=asdict(generator.vae_lora))
    return settings


@contextmanager
def _quiet_diffusers():
    """`save_lora_adapter` casts the model to its own dtype and logs a warning about it."""
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _replaceable(out: Path, keep: list[Path]) -> None:
    """Refuse to replace `out` unless it is an earlier export folder holding nothing of `keep`."""
    if not out.is_dir() or not (out / CONFIG).is_file():
        raise FileExistsError(f"{out} exists and is not an export folder (no {CONFIG}): not replaced")
    for path in keep:
        if path.resolve().is_relative_to(out.resolve()):
            raise FileExistsError(f"{out} holds {path}, which the export reads: not replaced")


def export_generator(generator: OneStepSR, out: str | os.PathLike, weights: str = "ema", source: dict | None = None,
                     color_fix: str = "adain", faces: dict | None = None, merged: bool = False,
                     overwrite: bool = False) -> Path:
    """Write `generator`'s trained weights and settings as an export folder `out` (see the module docstring).

    The folder is written beside `out` as `OUT.partial` (the export's scratch name) and renamed when
    complete, so an interrupted export leaves no partial folder under `out`. The LoRA is exported as
    trained (unmerged, at strength 1) whatever the generator's run-time state.

    Args:
        generator: The generator, with the weights to export in place.
        out: The folder to write.
        weights: Which weights these are ("ema" or "raw"), recorded.
        source: Where they came from (checkpoint path, generator updates), recorded.
        color_fix: The evaluation colour fix of the run, recorded as the default of loaders.
        faces: The run's face settings for inference (`reference_size`, `max_faces`), recorded.
        merged: Also write `OUT/merged`, a full diffusers folder with the LoRA folded in (`write_merged`).
        overwrite: Replace an existing export folder `out` (never another folder, nor one holding the
            checkpoint or the backbone).

    Raises:
        FileExistsError: `out` exists and may not be replaced.
    """
    from safetensors.torch import load_file, save_file

    out = Path(out)
    source_ = generator.backbone_source
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        keep = [Path(p) for p in ((source or {}).get("checkpoint"), getattr(source_, "path", None)) if p]
        _replaceable(out, keep)
    trained = [n for n, p in generator.named_parameters()
               if p.requires_grad and n not in exported_parameters(generator)]
    if trained:
        export_name(trained[0])  # raises, naming it
    arch = source_.architecture()
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with generator.as_trained():
        expected: dict[str, dict[str, torch.Tensor]] = {}
        for name, param in exported_parameters(generator).items():
            file, key = export_name(name)
            expected.setdefault(file, {})[key] = param.detach().cpu().clone()
        with _quiet_diffusers():
            generator.unet.save_lora_adapter(tmp, adapter_name=ADAPTER, weight_name=UNET_LORA)
            generator.vae.save_lora_adapter(tmp, adapter_name=ADAPTER, weight_name=VAE_LORA)
    save_file({k: v.contiguous() for k, v in expected[CONV_IN].items()}, tmp / CONV_IN)
    for file, tensors in expected.items():  # the written files hold exactly the generator's tensors
        written = load_file(tmp / file)
        if set(written) != set(tensors) or any(not torch.equal(written[k], v) for k, v in tensors.items()):
            raise RuntimeError(f"{file} was not written as expected (keys {sorted(set(written) ^ set(tensors))[:3]})")
    config = {
        "format": FORMAT, "version": VERSION,
        "generator": generator_settings(generator),
        "backbone": {**backbone_spec(source_), "fingerprint": fingerprint(arch), "architecture": arch},
        "weights": weights,
        "source": source or {},
        "eval_color_fix": color_fix,
        "faces": faces or {},
        "files": {file: file_sha256(tmp / file) for file in (UNET_LORA, VAE_LORA, CONV_IN)},
    }
    if merged:
        write_merged(generator, tmp / "merged")
    (tmp / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    old = out.with_name(out.name + ".replaced")
    if out.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)  # the earlier export stays until the new one is in place
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def read_export_config(folder: str | os.PathLike) -> dict:
    """The checked `headsup.json` of an export folder, every listed file present with its recorded sha256.

    Raises:
        FileNotFoundError: no such folder, no headsup.json, or a listed file missing.
        ValueError: headsup.json unreadable or not an export's, or a file whose content changed.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"export folder not found: {folder}")
    path = folder / CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a headsup export: it has no {CONFIG} (write one with "
                                f"`headsup-tools export RUN_OR_CKPT OUT`)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path} is not readable JSON: {err}") from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a headsup export's config (no \"format\": \"{FORMAT}\")")
    if config.get("version") != VERSION:
        raise ValueError(f"{path}: export format version {config.get('version')}, this headsup reads {VERSION}")
    for key in ("generator", "backbone", "files"):
        if not isinstance(config.get(key), dict):
            raise ValueError(f"{path}: '{key}' is missing or not an object")
    for file in (UNET_LORA, VAE_LORA, CONV_IN):
        if not (folder / file).is_file():
            raise FileNotFoundError(f"{folder / file} is missing: the export is incomplete")
        if config["files"].get(file) != file_sha256(folder / file):
            raise ValueError(f"{folder / file} is corrupt or was changed after export (its sha256 differs from "
                             f"the one in {CONFIG})")
    return config


def architecture_differences(recorded: dict, found: dict) -> list[str]:
    """The settings in which two backbone architectures differ, over the keys both record (a newer
    diffusers may write more keys with their default values)."""
    out = []
    for part in sorted(set(recorded) | set(found)):
        a, b = recorded.get(part, {}), found.get(part, {})
        for key in sorted(set(a) & set(b)):
            if json.dumps(a[key], sort_keys=True) != json.dumps(b[key], sort_keys=True):
                out.append(f"{part}.{key}: {a[key]!r} recorded, {b[key]!r} found")
    return out


def check_backbone(source: BackboneSource, recorded: dict, where: str) -> None:
    """Refuse a backbone whose architecture differs from `recorded` ({"fingerprint", "architecture"})."""
    arch = source.architecture()
    if fingerprint(arch) == recorded.get("fingerprint"):
        return
    differences = architecture_differences(recorded.get("architecture", {}), arch)
    if differences:
        backbone = getattr(source, "path", type(source).__name__)
        raise ValueError(f"backbone {backbone} does not match the one {where} was trained on (fingerprint "
                         f"{fingerprint(arch)}, recorded {recorded.get('fingerprint')}): "
                         + "; ".join(differences[:4]) + (" ..." if len(differences) > 4 else ""))


def build_backbone(spec: dict, path: str | os.PathLike | None = None) -> BackboneSource:
    """A backbone source from `backbone_spec` output; `path`: a local diffusers folder to use instead."""
    args = dict(spec.get("init_args", {}))
    if path is not None:
        return DiffusersFolder(str(path), **{k: args[k] for k in FOLDER_ARGS if k in args})
    if spec.get("class") not in BACKBONES:
        raise ValueError(f"unknown backbone class {spec.get('class')!r} (known: {sorted(BACKBONES)})")
    return BACKBONES[spec["class"]](**args)


def load_export(folder: str | os.PathLike, backbone: str | os.PathLike | None = None) -> tuple[OneStepSR, dict]:
    """The generator of an export folder, on the backbone recorded in it or on `backbone` (a local
    diffusers folder), with the exported weights; and the export's config.

    Raises:
        FileNotFoundError: the folder, a file of it, or the backbone is missing.
        ValueError: a corrupt or foreign file, a backbone of another architecture, tensors that do not fit.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    config = read_export_config(folder)
    source = build_backbone(config["backbone"], backbone)
    check_backbone(source, config["backbone"], f"the export {folder}")
    settings = dict(config["generator"])
    unknown = sorted(set(settings) - set(GENERATOR_SETTINGS))
    if unknown:
        raise ValueError(f"{folder / CONFIG}: unknown generator setting '{unknown[0]}'")
    settings.update(unet_lora=LoRASpec(**settings["unet_lora"]), vae_lora=LoRASpec(**settings["vae_lora"]))
    generator = OneStepSR(source, **settings)
    files = {}
    for file in (UNET_LORA, VAE_LORA, CONV_IN):
        try:
            files[file] = load_file(folder / file)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{folder / file} is not a readable safetensors file: {err}") from err
    state = {}
    for name, param in exported_parameters(generator).items():
        file, key = export_name(name)
        if key not in files[file]:
            raise ValueError(f"{folder / file} has no '{key}' (the generator of {CONFIG} needs it)")
        tensor = files[file].pop(key)
        if tensor.shape != param.shape:
            raise ValueError(f"{folder / file}: '{key}' has shape {tuple(tensor.shape)}, the generator's "
                             f"{tuple(param.shape)}")
        state[name] = tensor
    for file, rest in files.items():
        if rest:
            raise ValueError(f"{folder / file} has '{min(rest)}', which the generator of {CONFIG} does not have")
    generator.load_state_dict(state, strict=False)
    return generator, config


def write_merged(generator: OneStepSR, out: str | os.PathLike) -> Path:
    """A full diffusers folder at `out` with the LoRA folded into the base weights (at strength 1, as
    trained), for tools that cannot apply LoRA: unet/ (its conv_in as trained, widened where the model takes a reference) and vae/, plus
    the backbone folder's other parts (scheduler, text encoder, tokenizer, model_index.json) copied. Written
    under a temporary name and renamed when complete.

    Raises:
        FileExistsError: `out` exists.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists")
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    with generator.as_trained():  # folded at strength 1, as trained, whatever lora_scale says
        generator.set_lora_merged(True)
        for part, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            model = getattr(generator, part)
            state = {k.replace(".base_layer.", "."): v for k, v in model.state_dict().items() if ".lora_" not in k}
            plain = cls.from_config(model.config)
            plain.load_state_dict(state)
            plain.save_pretrained(tmp / part)
    source = generator.backbone_source
    root = Path(source.path).expanduser() if hasattr(source, "path") else None
    for name in ("scheduler", "text_encoder", "tokenizer", "feature_extractor", "model_index.json"):
        if root is not None and (root / name).is_dir():
            shutil.copytree(root / name, tmp / name)
        elif root is not None and (root / name).is_file():
            shutil.copy2(root / name, tmp / name)
    if not (tmp / "scheduler").exists():  # a backbone without a folder (FromConfig): its schedule
        DDPMScheduler.from_config(getattr(source, "scheduler", {})).save_pretrained(tmp / "scheduler")
    os.replace(tmp, out)
    return out
