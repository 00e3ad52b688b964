"""LPIPS perceptual distance (Zhang et al., CVPR 2018), VGG16 variant, frozen.

    d(x, y) = sum_l  mean_hw || w_l * (n(f_l(x)) - n(f_l(y))) ||^2

f_l are VGG16 activations after relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of
inputs shifted/scaled by the ImageNet statistics the LPIPS release uses, n is a
unit-length normalisation over channels and w_l are learned non-negative channel
weights. Weights come from two local files: the torchvision VGG16 state dict
(`vgg16-397923af.pth`) and the LPIPS v0.1 linear layers, by default the copy of the
release's `vgg.pth` that torchmetrics ships (`shipped_lpips_weights`); nothing is
downloaded. `LPIPS.shared` hands objectives and metrics built from the same files one
frozen instance, so a run with both `lpips` and `face_lpips` loads VGG16 once.
"""

from __future__ import annotations

import weakref
from pathlib import Path

import torch
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

# Input normalisation of the LPIPS release (inputs in [-1, 1]).
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_SLICES = ((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))
_CHANNELS = (64, 128, 256, 512, 512)
_SHARED: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def shipped_lpips_weights() -> Path:
    """Path of the LPIPS v0.1 VGG linear weights torchmetrics ships (`lpips_models/vgg.pth`)."""
    try:
        import torchmetrics.functional.image.lpips as tm_lpips
    except ImportError as err:  # pragma: no cover - torchmetrics is a dependency
        raise FileNotFoundError("lpips_weights: not given and torchmetrics (which ships LPIPS v0.1 vgg.pth) "
                                "is not importable; set lpips_weights to a local vgg.pth") from err
    path = Path(tm_lpips.__file__).parent / "lpips_models" / "vgg.pth"
    if not path.is_file():
        raise FileNotFoundError(f"lpips_weights: not given and the installed torchmetrics lacks {path}; "
                                "set lpips_weights to a local LPIPS v0.1 vgg.pth")
    return path


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
        features = make_layers(cfgs["D"])  # VGG16's feature layers, without building its classifier
        self.slices = nn.ModuleList(nn.Sequential(*features[a:b]) for a, b in _SLICES)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False).eval()

    @classmethod
    def from_files(cls, vgg_weights: str | Path | None, lpips_weights: str | Path | None = None,
                   owner: str = "LPIPS") -> LPIPS:
        """Build from a torchvision VGG16 state dict and LPIPS linear weights (`lin{l}.model.1.weight`).

        Args:
            vgg_weights: torchvision VGG16 state dict (`features.*` keys are used).
            lpips_weights: LPIPS linear layers; None: `shipped_lpips_weights()`.
            owner: The class whose `vgg_weights`/`lpips_weights` options these are, named in errors.
        """
        if vgg_weights is None or not Path(vgg_weights).expanduser().is_file():
            raise FileNotFoundError(
                f"{owner} vgg_weights (torchvision VGG16 state dict, vgg16-397923af.pth) not found: {vgg_weights}")
        lpips_weights = shipped_lpips_weights() if lpips_weights is None else lpips_weights
        model = cls()
        vgg = load_state_dict(vgg_weights, f"{owner} vgg_weights (VGG16)")
        feats = {k[len("features."):]: v for k, v in vgg.items() if k.startswith("features.")}
        for i, (a, b) in enumerate(_SLICES):
            part = {f"{int(k.split('.')[0]) - a}.{k.split('.', 1)[1]}": v for k, v in feats.items()
                    if a <= int(k.split(".")[0]) < b}
            model.slices[i].load_state_dict(part)
        lins = load_state_dict(lpips_weights, f"{owner} lpips_weights (LPIPS linear layers)")
        for i, lin in enumerate(model.lins):
            key = next((k for k in (f"lin{i}.model.1.weight", f"lins.{i}.model.1.weight", f"lin{i}.weight")
                        if k in lins), None)
            if key is None:
                raise KeyError(f"{owner} lpips_weights {lpips_weights} lack layer {i} "
                               f"(expected lin{i}.model.1.weight)")
            lin.weight.copy_(lins[key].view_as(lin.weight))
        return model

    @classmethod
    def shared(cls, vgg_weights: str | Path | None, lpips_weights: str | Path | None = None,
               owner: str = "LPIPS") -> LPIPS:
        """`from_files`, but one frozen instance per pair of files while any user holds it.

        Safe within one system because the module is frozen and stateless: registered under
        several objectives it moves with the system as one module and its parameters, never
        trainable, stay out of checkpoints. The cache is process-wide, so two systems alive in one
        process share it too (a device move or dtype cast of one applies to the other). The key
        includes each file's size and modification time, so a rewritten file is loaded afresh.
        """
        lpips_weights = shipped_lpips_weights() if lpips_weights is None else lpips_weights
        if vgg_weights is None or not Path(vgg_weights).expanduser().is_file():
            return cls.from_files(vgg_weights, lpips_weights, owner)  # raises the error naming the option
        key = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                    for p in (Path(vgg_weights).expanduser(), Path(lpips_weights).expanduser()) if p.is_file())
        model = _SHARED.get(key)
        if model is None:
            model = cls.from_files(vgg_weights, lpips_weights, owner)
            _SHARED[key] = model
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
