"""Discriminator: a frozen timm feature backbone with trainable multi-level patch heads.

As in projected/feature-space GANs used by one-step diffusion SR, the backbone (any timm
model with `features_only`, weights from a local file) stays frozen and small heads on
several of its feature levels give patch logits; only the heads train. One instance judges
whole images, another face crops.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn


class Discriminator(nn.Module):
    """Frozen `features_only` timm backbone + one trainable conv head per chosen level.

    Args:
        backbone: timm model name (e.g. convnext_tiny, resnet50, vit-free CNNs work best).
        weights: Local weights file of that model (safetensors or torch); required unless
            `random_init` (tests).
        random_init: Allow a randomly initialised backbone (no weights).
        out_indices: Feature levels the heads read.
        head_channels: Width of each head.
        input_size: Inputs are resized to this square size first (None: as they are).
    """

    def __init__(
        self,
        backbone: str = "convnext_tiny",
        weights: str | None = None,
        random_init: bool = False,
        out_indices: Sequence[int] = (1, 2, 3),
        head_channels: int = 256,
        input_size: int | None = 224,
    ) -> None:
        super().__init__()
        if weights is None and not random_init:
            raise ValueError(f"discriminator backbone '{backbone}': give local `weights` (nothing is downloaded)")
        if weights is not None and not Path(weights).is_file():
            raise FileNotFoundError(f"discriminator weights not found: {weights} (backbone '{backbone}')")
        kwargs = dict(features_only=True, out_indices=tuple(out_indices))
        if weights is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
        self.backbone = timm.create_model(backbone, **kwargs).requires_grad_(False).eval()
        cfg = self.backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(cfg.get("std", (0.229, 0.224, 0.225))).view(1, 3, 1, 1), False)
        self.input_size = input_size
        self.heads = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(c, head_channels, 3, padding=1),
                nn.LeakyReLU(0.2),
                nn.Conv2d(head_channels, 1, 1),
            )
            for c in self.backbone.feature_info.channels()
        )

    def train(self, mode: bool = True) -> Discriminator:
        super().train(mode)
        self.backbone.eval()
        return self

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.heads.parameters())

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images (B, 3, H, W) in [0, 1] -> patch logits per level, each (B, 1, h_l, w_l)."""
        x = images.float()
        if self.input_size is not None and x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", antialias=True,
                              align_corners=False)
        feats = self.backbone((x - self.mean) / self.std)
        return [head(f.float()) for head, f in zip(self.heads, feats)]
