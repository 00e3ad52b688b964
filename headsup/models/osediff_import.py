"""Import OSEDiff's released checkpoint (`osediff.pkl`, github.com/cswry/OSEDiff) as a headsup checkpoint.

The release is a `torch.save` dict: the names of the modules carrying LoRA
(`unet_lora_encoder_modules`, `unet_lora_decoder_modules`, `unet_lora_others_modules`,
`vae_lora_encoder_modules`; the VAE list repeats names), the ranks (`rank_unet`, `rank_vae`) and
two partial state dicts of the peft-wrapped networks: `state_dict_unet` (LoRA tensors and the fully
trained `conv_in`, stored as `conv_in.base_layer.*`) and `state_dict_vae` (LoRA tensors). OSEDiff
puts three UNet adapters (`default_encoder`, `default_decoder`, `default_others`) on disjoint module
sets and one VAE adapter (`default_encoder`), all with peft's default lora_alpha 8. Adapters of equal
rank and alpha on disjoint modules compute exactly what one adapter on their union computes, so the
import maps them onto `OneStepSR`'s single adapter per network (`default`): with the `osediff_unet` /
`osediff_vae_encoder` presets when those select the stored module sets on the backbone (they do
on SD 2.1-base), otherwise with the stored module names themselves as targets.

The result is a Lightning-style checkpoint whose hyper-parameters describe the generator (the local
SD 2.1-base folder, the checkpoint's ranks, alpha 8, t = 999, Pillow's bicubic LQ upsampling as in
OSEDiff's `test_osediff.py`); `headsup predict --ckpt_path`, `headsup test --ckpt_path` and
`headsup-tools enhance --weights` load it like a checkpoint of `headsup fit` (`upsample` and the other
run options stay the checkpoint's unless the run's config or command line sets them).

Differences from OSEDiff's test script that remain:
- Prompt: OSEDiff prompts each image with its DAPE (RAM) tags, `f"{tags}, {prompt},"`. headsup reads
  tags from files (`enhance --prompts txt --prompt-format "{tags}, {prompt},"`, `predict
  --data.predict_prompts ...`); without them the backbone's fixed prompt (`prompt`, default empty) is used.
- Latent: OSEDiff's inference draws a sample of the VAE posterior (unseeded); headsup's inference
  uses its mean (`sample_latent` is recorded as true, which applies in training only).
- Small inputs (short side under 128 px) are first enlarged to 128 px by OSEDiff's script and sizes are
  brought to a multiple of 8 by a Lanczos resize; headsup pads to its grid and crops back instead.
"""

from __future__ import annotations

import json
import os
import pickle
import re
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
from torch import nn

from headsup.data.io import file_sha256
from headsup.models.lora import LoRASpec, resolve_targets

OSEDIFF_LORA_ALPHA = 8.0  # OSEDiff's LoraConfig leaves lora_alpha at peft's default
UNET_ADAPTERS = {  # OSEDiff's UNet adapter -> the pkl key listing its modules
    "default_encoder": "unet_lora_encoder_modules",
    "default_decoder": "unet_lora_decoder_modules",
    "default_others": "unet_lora_others_modules",
}
VAE_ADAPTER = "default_encoder"
REQUIRED_KEYS = (*UNET_ADAPTERS.values(), "vae_lora_encoder_modules", "rank_unet", "rank_vae",
                 "state_dict_unet", "state_dict_vae")
HEADSUP_ADAPTER = "default"  # the adapter name `add_lora` gives OneStepSR's LoRA
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.(?P<adapter>[^.]+)\.weight$")


@dataclass
class OSEDiffCheckpoint:
    """The content of an OSEDiff `.pkl`, checked for consistency (not yet against a backbone).

    Attributes:
        path: The file it was read from.
        unet_modules: OSEDiff adapter name -> the UNet modules it adapts (duplicates removed, order kept).
        vae_modules: The VAE modules of its encoder adapter (duplicates removed, order kept).
        rank_unet: LoRA rank of the UNet adapters.
        rank_vae: LoRA rank of the VAE adapter.
        unet_state: `state_dict_unet` (OSEDiff's key names).
        vae_state: `state_dict_vae` (OSEDiff's key names).
    """

    path: Path
    unet_modules: dict[str, list[str]]
    vae_modules: list[str]
    rank_unet: int
    rank_vae: int
    unet_state: dict[str, torch.Tensor]
    vae_state: dict[str, torch.Tensor]

    @property
    def unet_union(self) -> list[str]:
        return [m for modules in self.unet_modules.values() for m in modules]


def _module_list(path: Path, raw: dict, key: str) -> list[str]:
    value = raw[key]
    if not isinstance(value, (list, tuple)) or not all(isinstance(m, str) and m for m in value):
        raise ValueError(f"{path}: '{key}' must be a list of module names, got {type(value).__name__}")
    return list(dict.fromkeys(value))


def _rank(path: Path, raw: dict, key: str) -> int:
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{path}: '{key}' must be a positive integer, got {value!r}")
    return value


def _state(path: Path, raw: dict, key: str) -> dict[str, torch.Tensor]:
    value = raw[key]
    if not isinstance(value, dict):
        raise ValueError(f"{path}: '{key}' must be a state dict, got {type(value).__name__}")
    for name, tensor in value.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            raise ValueError(f"{path}: {key}['{name}'] is not a floating-point tensor")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{path}: {key}['{name}'] holds NaN or infinite values")
    return dict(value)


def _check_lora_keys(path: Path, key: str, state: dict, adapters: dict[str, list[str]], rank: int,
                     rank_key: str) -> set[str]:
    """Every LoRA tensor belongs to a listed module under the adapter listing it, has the stated rank,
    and every listed module has both factors. Returns the keys that are not LoRA tensors."""
    owner = {m: adapter for adapter, modules in adapters.items() for m in modules}
    seen: set[tuple[str, str]] = set()
    rest = set()
    for name, tensor in state.items():
        match = _LORA_KEY.match(name)
        if match is None:
            rest.add(name)
            continue
        module, ab, adapter = match["module"], match["ab"], match["adapter"]
        if module not in owner:
            raise ValueError(f"{path}: {key}['{name}']: module '{module}' is in none of the checkpoint's module lists")
        if adapter != owner[module]:
            raise ValueError(f"{path}: {key}['{name}']: adapter '{adapter}', but '{module}' is listed for "
                             f"'{owner[module]}'")
        found = tensor.shape[0] if ab == "A" else (tensor.shape[1] if tensor.ndim > 1 else -1)
        if found != rank:
            raise ValueError(f"{path}: {key}['{name}'] has rank {found}, but {rank_key} is {rank}")
        seen.add((module, ab))
    for module, adapter in owner.items():
        for ab in "AB":
            if (module, ab) not in seen:
                raise ValueError(f"{path}: {key} has no '{module}.lora_{ab}.{adapter}.weight' (module listed for "
                                 f"'{adapter}')")
    return rest


def read_osediff_checkpoint(path: str | os.PathLike) -> OSEDiffCheckpoint:
    """Load and check an OSEDiff `.pkl` (tensors-only `torch.load` onto the CPU).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a tensors-only torch file, not a dict, a key missing or malformed, module
            lists overlapping, LoRA tensors without a listed module (or the reverse), a rank mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"OSEDiff checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds more than tensors and plain values (loading it could run code) or is "
                         f"not a torch file, refused: {str(err).splitlines()[0]}") from err
    except Exception as err:  # noqa: BLE001 - any unreadable file becomes one clear error naming it
        raise ValueError(f"{path} is not a readable torch file: {err}") from err
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not an OSEDiff checkpoint: it holds a {type(raw).__name__}, not a dict")
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        raise ValueError(f"{path} is not an OSEDiff checkpoint: key '{missing[0]}' is missing "
                         f"(has {sorted(map(str, raw))})")
    unet_modules = {adapter: _module_list(path, raw, key) for adapter, key in UNET_ADAPTERS.items()}
    owner: dict[str, str] = {}
    for adapter, modules in unet_modules.items():
        for m in modules:
            if m in owner:
                raise ValueError(f"{path}: UNet module '{m}' is listed in both {UNET_ADAPTERS[owner[m]]} and "
                                 f"{UNET_ADAPTERS[adapter]}: overlapping adapters cannot be imported as one")
            owner[m] = adapter
    ckpt = OSEDiffCheckpoint(
        path=path, unet_modules=unet_modules, vae_modules=_module_list(path, raw, "vae_lora_encoder_modules"),
        rank_unet=_rank(path, raw, "rank_unet"), rank_vae=_rank(path, raw, "rank_vae"),
        unet_state=_state(path, raw, "state_dict_unet"), vae_state=_state(path, raw, "state_dict_vae"),
    )
    decoder = [m for m in ckpt.vae_modules if m.startswith(("decoder.", "post_quant_conv"))]
    if decoder:
        raise ValueError(f"{path}: vae_lora_encoder_modules reaches the VAE decoder ('{decoder[0]}'): not OSEDiff's")
    rest = _check_lora_keys(path, "state_dict_unet", ckpt.unet_state, unet_modules, ckpt.rank_unet, "rank_unet")
    conv_in = {"conv_in.base_layer.weight", "conv_in.base_layer.bias"} if "conv_in" in owner else \
        {"conv_in.weight", "conv_in.bias"}
    if rest - conv_in:
        raise ValueError(f"{path}: state_dict_unet has an unexpected entry '{min(rest - conv_in)}' (neither a LoRA "
                         f"tensor of a listed module nor conv_in)")
    if conv_in - rest:
        raise ValueError(f"{path}: state_dict_unet has no '{min(conv_in - rest)}' (OSEDiff trains conv_in fully)")
    rest = _check_lora_keys(path, "state_dict_vae", ckpt.vae_state, {VAE_ADAPTER: ckpt.vae_modules}, ckpt.rank_vae,
                            "rank_vae")
    if rest:
        raise ValueError(f"{path}: state_dict_vae has an unexpected entry '{min(rest)}' (OSEDiff's VAE has LoRA "
                         f"tensors only)")
    return ckpt


def _backbone_modules(root: Path, part: str) -> nn.Module:
    """The backbone's UNet or VAE built from its config on the meta device (names and shapes, no weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    cls = UNet2DConditionModel if part == "unet" else AutoencoderKL
    with torch.device("meta"):
        return cls.from_config(cls.load_config(root, subfolder=part, local_files_only=True))


def _targets(ckpt: OSEDiffCheckpoint, model: nn.Module, stored: list[str], preset: str, what: str,
             root: Path) -> str | list[str]:
    """The preset when it selects exactly the stored modules on this backbone, else the stored names."""
    layers = {n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}
    absent = [m for m in stored if m not in layers]
    if absent:
        raise ValueError(f"{ckpt.path}: LoRA module '{absent[0]}' ({len(absent)} in all) is not a Linear/Conv2d "
                         f"layer of the backbone's {what} in {root}: a checkpoint for another {what}?")
    if set(resolve_targets(model, preset)) == set(stored):
        return preset
    if set(resolve_targets(model, stored)) != set(stored):  # a suffix that also names deeper layers
        raise ValueError(f"{ckpt.path}: the {what} module names do not select exactly themselves in {root}")
    return stored


def _check_scheduler(root: Path) -> None:
    """OSEDiff takes x0 from diffusers' DDPMScheduler built from the backbone's scheduler config; headsup
    computes it without clipping, which agrees only where that config neither clips nor thresholds."""
    from diffusers import DDPMScheduler

    file = root / "scheduler" / "scheduler_config.json"
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: OSEDiff builds its noise schedule from the backbone's scheduler")
    config = DDPMScheduler.from_config({k: v for k, v in json.loads(file.read_text()).items()
                                        if not k.startswith("_")}).config
    if config.clip_sample or config.thresholding:
        raise ValueError(f"{file}: clip_sample/thresholding is on, so OSEDiff would clip x0 and headsup does not "
                         f"(SD 2.1-base sets clip_sample false): use the SD 2.1-base folder OSEDiff was trained on")


def generator_init_args(ckpt: OSEDiffCheckpoint, backbone: str | os.PathLike, prompt: str = "",
                        scale: int = 4) -> dict:
    """`OneStepSR` init args (class-path form, as in a `headsup fit` checkpoint) running `ckpt` on the
    local diffusers folder `backbone` as OSEDiff's test script does (see the module docstring for what differs).

    Raises:
        FileNotFoundError: the backbone folder, its unet/, vae/ or scheduler config is missing.
        ValueError: a stored module is not a layer of the backbone, or its scheduler clips x0.
    """
    root = Path(backbone).expanduser().resolve()
    for sub in ("unet", "vae"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"--backbone {root} has no '{sub}/' subfolder (give the local SD 2.1-base "
                                    f"diffusers folder OSEDiff was trained from)")
    _check_scheduler(root)
    unet_targets = _targets(ckpt, _backbone_modules(root, "unet"), ckpt.unet_union, "osediff_unet", "UNet", root)
    vae_targets = _targets(ckpt, _backbone_modules(root, "vae"), ckpt.vae_modules, "osediff_vae_encoder", "VAE", root)
    return {
        "class_path": "headsup.models.generator.OneStepSR",
        "init_args": {
            "backbone": {"class_path": "headsup.models.backbone.DiffusersFolder",
                         "init_args": {"path": str(root), "prompt": prompt}},
            "scale": scale,
            "timestep": 999,
            "unet_lora": {"rank": ckpt.rank_unet, "alpha": OSEDIFF_LORA_ALPHA, "targets": unet_targets, "prefix": ""},
            "vae_lora": {"rank": ckpt.rank_vae, "alpha": OSEDIFF_LORA_ALPHA, "targets": vae_targets, "prefix": ""},
            "train_conv_in": True,
            "sample_latent": True,
            "upsample": "pil_bicubic",
            "reference": False,
        },
    }


def build_generator(init_args: dict) -> nn.Module:
    """`OneStepSR` from `generator_init_args`' output."""
    from headsup.models.backbone import DiffusersFolder
    from headsup.models.generator import OneStepSR

    args = dict(init_args["init_args"])
    backbone = DiffusersFolder(**args.pop("backbone")["init_args"])
    return OneStepSR(backbone, unet_lora=LoRASpec(**args.pop("unet_lora")), vae_lora=LoRASpec(**args.pop("vae_lora")),
                     **args)


def _headsup_key(name: str) -> str:
    match = _LORA_KEY.match(name)
    if match is None:
        return name  # conv_in's base weights keep their names
    return f"{match['module']}.lora_{match['ab']}.{HEADSUP_ADAPTER}.weight"


def osediff_state_dict(ckpt: OSEDiffCheckpoint, generator: nn.Module) -> dict[str, torch.Tensor]:
    """`ckpt`'s tensors under the names of `generator`'s trainable parameters (LoRA, conv_in), in their dtype.

    Raises:
        ValueError: a trainable parameter without a stored tensor, a stored tensor without a parameter,
            or a shape that differs (naming the stored key).
    """
    trainable = {n: p for n, p in generator.named_parameters() if p.requires_grad}
    out: dict[str, torch.Tensor] = {}
    parts = (("unet.", "state_dict_unet", ckpt.unet_state), ("vae.", "state_dict_vae", ckpt.vae_state))
    for prefix, key, state in parts:
        for name, tensor in state.items():
            target = prefix + _headsup_key(name)
            if target not in trainable:
                raise ValueError(f"{ckpt.path}: {key}['{name}'] has no counterpart '{target}' in the generator")
            param = trainable[target]
            if tensor.shape != param.shape:
                raise ValueError(f"{ckpt.path}: {key}['{name}'] has shape {tuple(tensor.shape)}, the backbone's "
                                 f"'{target}' {tuple(param.shape)}: a checkpoint for another backbone?")
            out[target] = tensor.detach().to(dtype=param.dtype).contiguous().clone()
    missing = sorted(set(trainable) - set(out))
    if missing:
        raise ValueError(f"{ckpt.path}: no tensor for the generator's '{missing[0]}' ({len(missing)} missing)")
    return out


def import_osediff(pkl: str | os.PathLike, out: str | os.PathLike, backbone: str | os.PathLike,
                   overwrite: bool = False, prompt: str = "", scale: int = 4) -> Path:
    """Write OSEDiff's released checkpoint `pkl` as a headsup checkpoint `out` on the SD 2.1-base
    diffusers folder `backbone` (the one OSEDiff was trained from; it is loaded from that path later).

    `out` holds `state_dict` (the generator's LoRA and conv_in tensors under SRSystem's names, and
    `generator_updates` = 0), `hyper_parameters` (SRSystem's init args: the generator of
    `generator_init_args`, an MSE objective, method "osediff"), Lightning's bookkeeping keys and
    `osediff_import` (source file, its sha256, ranks, targets, prompt). Prompts: the backbone's fixed
    `prompt` for every image (OSEDiff tags each image with DAPE; per-image prompts are not built yet).

    Raises:
        FileExistsError: `out` exists and not `overwrite`.
        FileNotFoundError: `pkl` or the backbone (or a part of it) is missing.
        ValueError: anything in `pkl` that does not fit OSEDiff's layout or this backbone (see
            `read_osediff_checkpoint`, `generator_init_args`, `osediff_state_dict`).
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    ckpt = read_osediff_checkpoint(pkl)
    generator_args = generator_init_args(ckpt, backbone, prompt=prompt, scale=scale)
    generator = build_generator(generator_args)
    state = osediff_state_dict(ckpt, generator)
    targets = {part: generator_args["init_args"][f"{part}_lora"]["targets"] for part in ("unet", "vae")}
    checkpoint = {
        "epoch": 0,
        "global_step": 0,
        "pytorch-lightning_version": version("lightning"),
        "state_dict": {"generator_updates": torch.zeros((), dtype=torch.long),
                       **{f"generator.{k}": v for k, v in state.items()}},
        "hparams_name": "kwargs",
        "hyper_parameters": {
            "_instantiator": "lightning.pytorch.cli.instantiate_module",
            "generator": generator_args,
            "objectives": {"mse": {"class_path": "headsup.objectives.reconstruction.PixelMSE",
                                   "init_args": {"weight": 1.0, "range": "-1..1"}}},
            "method": "osediff",
            "eval_color_fix": "adain",
        },
        "osediff_import": {
            "source": str(ckpt.path.resolve()), "sha256": file_sha256(ckpt.path), "rank_unet": ckpt.rank_unet,
            "rank_vae": ckpt.rank_vae, "alpha": OSEDIFF_LORA_ALPHA, "unet_modules": len(ckpt.unet_union),
            "vae_modules": len(ckpt.vae_modules), "prompt": prompt,
            "targets": {k: v if isinstance(v, str) else "the stored module names" for k, v in targets.items()},
        },
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(checkpoint, partial)
    os.replace(partial, out)
    return out


def osediff_unet_part(module: str) -> str:
    """Which of OSEDiff's three UNet adapters a module belongs to (its rule on names: the down blocks and
    conv_in, the up blocks and conv_out, the rest)."""
    if "down_blocks" in module or "conv_in" in module:
        return "default_encoder"
    if "up_blocks" in module or "conv_out" in module:
        return "default_decoder"
    return "default_others"


def export_osediff(generator: nn.Module, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write `generator`'s LoRA and conv_in in OSEDiff's `osediff.pkl` layout (the inverse of `import_osediff`):
    three UNet adapters split by OSEDiff's rule (`osediff_unet_part`), one VAE adapter, peft's parameter
    names under OSEDiff's adapter names, conv_in's base weights, the ranks.

    Raises:
        FileExistsError: `out` exists and not `overwrite`.
        ValueError: a generator OSEDiff's code cannot run: reference conditioning (a wider conv_in), a
            LoRA alpha other than peft's default 8 (OSEDiff never sets it), a timestep other than 999.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if getattr(generator, "reference", False):
        raise ValueError("OSEDiff's format has no reference conditioning: this model's conv_in takes a reference")
    for part in ("unet_lora", "vae_lora"):
        alpha = getattr(generator, part).alpha
        if alpha != OSEDIFF_LORA_ALPHA:
            raise ValueError(f"{part}.alpha is {alpha}: OSEDiff's code builds its LoRA with peft's default alpha "
                             f"{OSEDIFF_LORA_ALPHA:g}, so it would run this model at another strength")
    if generator.timestep != 999:
        raise ValueError(f"the model runs at t = {generator.timestep}; OSEDiff's code calls the UNet at t = 999")

    def adapted(model: nn.Module) -> list[str]:
        return [n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)]

    unet_modules = adapted(generator.unet)
    lists = {adapter: [m for m in unet_modules if osediff_unet_part(m) == adapter] for adapter in UNET_ADAPTERS}
    owner = {m: osediff_unet_part(m) for m in unet_modules}

    def renamed(name: str, adapter_of) -> str:
        match = _LORA_KEY.match(name)
        if match is None:
            return name
        return f"{match['module']}.lora_{match['ab']}.{adapter_of(match['module'])}.weight"

    with generator.as_trained():  # unmerged: a merged conv_in base weight would carry its LoRA twice
        unet_state = {renamed(k, owner.get): v.detach().cpu().clone() for k, v in generator.unet.state_dict().items()
                      if "lora" in k or "conv_in" in k}
        vae_state = {renamed(k, lambda _: VAE_ADAPTER): v.detach().cpu().clone()
                     for k, v in generator.vae.state_dict().items() if "lora" in k}
    release = {
        **{key: lists[adapter] for adapter, key in UNET_ADAPTERS.items()},
        "vae_lora_encoder_modules": adapted(generator.vae),
        "rank_unet": generator.unet_lora.rank, "rank_vae": generator.vae_lora.rank,
        "state_dict_unet": unet_state, "state_dict_vae": vae_state,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    torch.save(release, partial)
    read_osediff_checkpoint(partial)  # what was written reads back as an OSEDiff checkpoint, before it replaces
    os.replace(partial, out)
    return out
