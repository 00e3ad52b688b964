"""LPIPS perceptual distance (Zhang et al., CVPR 2018), VGG16 variant, frozen.

    d(x, y) = sum_l  mean_hw || w_l * (n(f_l(x)) - n(f_l(y))) ||^2

f_l are VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of
inputs shifted/scaled by the ImageNet statistics the LPIPS release uses, n is a
unit-length normalisation over channels and w_l are learned non-negative channel
weights. Weights come from two local files (the torchvision VGG16 state dict and
the LPIPS linear layers); nothing is downloaded.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torchvision.models import vgg16

# Input normalisation of the LPIPS release (inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_CHANNELS = (64, 128, 256, 512, 512)


def load_state_dict(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    """Load a tensor-only state dict (safetensors or torch `weights_only`), naming `what` on failure."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{what} weights not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG distance; inputs in [0, 1], output (B,) distances."""

    def __init__(self) -> None:
        super().__init__()
        features = vgg16(weights=None).features
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in _SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg_weights: str | Path, lpips_weights: str | Path) -> LPIPS:
        """Build from a torchvision VGG16 state dict and LPIPS linear weights (`lin{l}.model.1.weight`)."""
        model = cls()
        vgg = load_state_dict(vgg_weights, "VGG16 (LPIPS backbone)")
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        for i, (a, b) in enumerate(_SLICES):
            part = {f"{int(k.split('.')[0]) - a}.{k.split('.', 1)[1]}": v for k, v in feats.items()
                    if a <= int(k.split(".")[0]) < b}
            model.slices[i].load_state_dict(part)
        lins = load_state_dict(lpips_weights, "LPIPS linear layers")
        for i, lin in enumerate(model.lins):
            key = next((k for k in (f"lin{i}.model.1.weight", f"lins.{i}.model.1.weight", f"lin{i}.weight")
                        if k in lins), None)
            if key is None:
                raise KeyError(f"LPIPS weights {lpips_weights} lack layer {i} (expected lin{i}.model.1.weight)")
            lin.weight.copy_(lins[key].view_as(lin.weight))
        return model

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = ((x * 2 - 1) - self.shift) / self.scale
        y = ((y * 2 - 1) - self.shift) / self.scale
        total = x.new_zeros(x.shape[0])
        for block, lin in zip(self.slices, self.lins):
            x, y = block(x), block(y)
            nx = x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            ny = y / (y.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + lin((nx - ny) ** 2).mean(dim=(1, 2, 3))
        return total
