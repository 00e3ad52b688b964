"""LoRA adapters through peft, with named target presets.

A `LoRASpec` names its targets either as a preset or as a list of module-name suffixes
("conv1", "to_q", "ff.net.2") resolved under a prefix ("encoder."). Presets:

- `osediff_unet`, `osediff_vae_encoder` (the defaults): the modules OSEDiff's released
  `initialize_unet` / `initialize_vae` adapt. Every Linear/Conv2d whose parameter name contains one
  of OSEDiff's patterns (a substring match, names with "norm" skipped). In the UNet that is every
  convolution and attention/feed-forward projection including `conv_in`, but not the time
  embedding or the resnets' `time_emb_proj` (258 modules in SD 2.1-base). In the VAE it is the
  encoder's modules plus `quant_conv` (32), never the decoder or `post_quant_conv`.
- `headsup_unet`, `headsup_vae_encoder`: the suffix lists of earlier headsup versions (UNet with
  `time_emb_proj`, without `conv_in`: 279; VAE encoder without `conv_in` and `quant_conv`: 30).
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoraConfig
from torch import nn

VAE_ENCODER_TARGETS = ["conv1", "conv2", "conv_shortcut", "conv", "conv_out", "to_q", "to_k", "to_v", "to_out.0"]
UNET_TARGETS = [
    "conv1", "conv2", "conv_shortcut", "conv", "conv_out", "proj_in", "proj_out",
    "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "time_emb_proj",
]  # fmt: skip

# The substrings OSEDiff's osediff.py matches against parameter names (facts of its release).
OSEDIFF_UNET_PATTERNS = ("to_k", "to_q", "to_v", "to_out.0", "conv", "conv1", "conv2", "conv_in", "conv_shortcut",
                         "conv_out", "proj_out", "proj_in", "ff.net.2", "ff.net.0.proj")
OSEDIFF_VAE_PATTERNS = ("conv1", "conv2", "conv_in", "conv_shortcut", "conv", "conv_out", "to_k", "to_q", "to_v",
                        "to_out.0")


def _osediff_unet(name: str) -> bool:
    return "norm" not in name and any(p in name for p in OSEDIFF_UNET_PATTERNS)


def _osediff_vae_encoder(name: str) -> bool:
    if "norm" in name:
        return False
    in_encoder = "encoder" in name and any(p in name for p in OSEDIFF_VAE_PATTERNS)
    return in_encoder or ("quant_conv" in name and "post_quant_conv" not in name)


PRESETS = {
    "osediff_unet": _osediff_unet,
    "osediff_vae_encoder": _osediff_vae_encoder,
    "headsup_unet": UNET_TARGETS,
    "headsup_vae_encoder": VAE_ENCODER_TARGETS,
}


@dataclass
class LoRASpec:
    """Rank, scale and targets of one LoRA adapter.

    Args:
        rank: Rank r of the update B @ A (OSEDiff: 4).
        alpha: Scale numerator; the update is multiplied by alpha / rank (OSEDiff: peft's default 8,
            i.e. scale 2 at rank 4).
        targets: A preset name (see the module docstring) or module-name suffixes to adapt
            (Linear and Conv2d only); None: the default preset of the network it is used on.
        prefix: Only modules whose full name starts with this prefix are adapted (e.g. "mid_block.").
    """

    rank: int = 4
    alpha: float = 8.0
    targets: list[str] | str | None = None
    prefix: str = ""


def resolve_targets(model: nn.Module, targets: list[str] | str, prefix: str = "") -> list[str]:
    """Full names of the Linear/Conv2d modules under `prefix` that `targets` (a preset name or
    name suffixes) selects."""
    if isinstance(targets, str):
        if targets not in PRESETS:
            raise ValueError(f"unknown LoRA target preset '{targets}'; presets: {sorted(PRESETS)}")
        targets = PRESETS[targets]
    if callable(targets):
        def keep(name: str) -> bool:
            return targets(name + ".weight")  # the rules read parameter names, as OSEDiff's loops do
    else:
        def keep(name: str) -> bool:
            return any(name == s or name.endswith("." + s) for s in targets)
    return [name for name, module in model.named_modules()
            if name.startswith(prefix) and isinstance(module, (nn.Linear, nn.Conv2d)) and keep(name)]


def add_lora(model: nn.Module, spec: LoRASpec, adapter_name: str = "default",
             default: str = "osediff_unet") -> list[str]:
    """Inject a peft LoRA adapter into a diffusers model; returns the adapted module names.
    `default`: the preset used when `spec.targets` is None.

    Raises:
        ValueError: no module matches the targets (a misspelt target list).
    """
    targets = default if spec.targets is None else spec.targets
    names = resolve_targets(model, targets, spec.prefix)
    if not names:
        raise ValueError(f"LoRA targets {targets} (prefix '{spec.prefix}') match no module")
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, init_lora_weights="gaussian", target_modules=names
    )
    model.add_adapter(config, adapter_name=adapter_name)
    return names
