"""LoRA adapters through peft, targeted by module-name suffix under a prefix.

OSEDiff puts LoRA on the VAE encoder's convolutions and attention projections
and on the UNet's; the decoder is left untouched. Targets are given as name
suffixes ("conv1", "to_q", "ff.net.2") and resolved here to the exact module
names under a prefix ("encoder."), so the same list cannot leak into the decoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from peft import LoraConfig
from torch import nn

VAE_ENCODER_TARGETS = ["conv1", "conv2", "conv_shortcut", "conv", "conv_out", "to_q", "to_k", "to_v", "to_out.0"]
UNET_TARGETS = [
    "conv1", "conv2", "conv_shortcut", "conv", "conv_out", "proj_in", "proj_out",
    "to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "time_emb_proj",
]  # fmt: skip


@dataclass
class LoRASpec:
    """Rank, scale and targets of one LoRA adapter.

    Args:
        rank: Rank r of the update B @ A.
        alpha: Scale numerator; the update is multiplied by alpha / rank.
        targets: Module-name suffixes to adapt (Linear and Conv2d only).
        prefix: Only modules whose full name starts with this prefix are adapted.
    """

    rank: int = 4
    alpha: float = 4.0
    targets: list[str] = field(default_factory=lambda: list(UNET_TARGETS))
    prefix: str = ""


def resolve_targets(model: nn.Module, suffixes: list[str], prefix: str = "") -> list[str]:
    """Full names of Linear/Conv2d modules under `prefix` whose name ends with a suffix."""
    found = []
    for name, module in model.named_modules():
        if not name.startswith(prefix) or not isinstance(module, (nn.Linear, nn.Conv2d)):
            continue
        if any(name == s or name.endswith("." + s) for s in suffixes):
            found.append(name)
    return found


def add_lora(model: nn.Module, spec: LoRASpec, adapter_name: str = "default") -> list[str]:
    """Inject a peft LoRA adapter into a diffusers model; returns the adapted module names.

    Raises:
        ValueError: no module matches the targets (a misspelt target list).
    """
    names = resolve_targets(model, spec.targets, spec.prefix)
    if not names:
        raise ValueError(f"LoRA targets {spec.targets} (prefix '{spec.prefix}') match no module")
    config = LoraConfig(
        r=spec.rank, lora_alpha=spec.alpha, init_lora_weights="gaussian", target_modules=names
    )
    model.add_adapter(config, adapter_name=adapter_name)
    return names
