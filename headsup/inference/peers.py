"""The peers HeadsUp is compared with, run from their own released weight files through spandrel.

spandrel reads the architecture and its hyper-parameters from the state dict of a release file
(`RealESRGAN_x4plus.pth`, `realesr-general-x4v3.pth`, SwinIR's real-SR `.pth`, `GFPGANv1.4.pth`,
and, with the optional `spandrel-extra-arches` package (CodeFormer's own licence), `codeformer.pth`).
`PeerModel` adds each peer's official pre- and post-processing around the network:

- face models (GFPGAN, CodeFormer, RestoreFormer) take 512 x 512 aligned faces and images in [-1, 1],
  returned in [-1, 1], as their official inference does (spandrel's own call passes [0, 1] straight through);
- CodeFormer runs with its fidelity weight `w` (0: quality .. 1: fidelity; official default 0.5);
- inputs are padded to the size the architecture needs (SwinIR: a multiple of its window) by
  mirroring, as SwinIR's official test does, and the output cropped back;
- large images are cut into overlapping tiles, blended (`headsup.models.tiling.tiled_apply`);
- fp16/bf16 only where the descriptor reports support.

It maps (B, 3, h, w) in [0, 1] to (B, 3, s*h, s*w), so it runs as a whole-image method in
`headsup test` (Real-ESRGAN, SwinIR) and as either role of the blending baseline.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from headsup.models.tiling import tiled_apply

# architectures whose official inference normalises to [-1, 1]
SIGNED = frozenset({"GFPGAN", "CodeFormer", "RestoreFormer"})
FACE_SIZE = 512  # the aligned face the face models take and return
PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_descriptor(path: str | Path):
    """spandrel's ImageModelDescriptor of a release file, with a clear error naming the file."""
    import spandrel

    try:
        import spandrel_extra_arches  # CodeFormer and others; optional (its own licence)

        spandrel_extra_arches.install(ignore_duplicates=True)
    except ImportError:
        pass
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"peer weights not found: {path}")
    try:
        descriptor = spandrel.ModelLoader(device="cpu").load_from_file(str(path))
    except spandrel.UnsupportedModelError as err:
        hint = "" if _has_extra_arches() else " (CodeFormer needs the optional spandrel-extra-arches package)"
        raise ValueError(f"{path}: spandrel does not recognise this state dict's architecture{hint}") from err
    except Exception as err:  # noqa: BLE001 - unreadable or corrupt files, named
        raise ValueError(f"{path}: could not be loaded as a model: {err}") from err
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        raise ValueError(f"{path}: a {descriptor.architecture.name} model is not an image-to-image model")
    return descriptor


def _has_extra_arches() -> bool:
    import importlib.util

    return importlib.util.find_spec("spandrel_extra_arches") is not None


def mirror_pad(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pad bottom/right to a multiple of `multiple` with the image's mirror (SwinIR's test padding)."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph:
        x = torch.cat([x, torch.flip(x, [2])], 2)[..., : h + ph, :]
    if pw:
        x = torch.cat([x, torch.flip(x, [3])], 3)[..., : w + pw]
    return x, h, w


class PeerModel(nn.Module):
    """A released SR or face model from its own weight file, with its official pre/post-processing.

    Args:
        path: The release file, e.g. RealESRGAN_x4plus.pth, GFPGANv1.4.pth, codeformer.pth.
        fidelity: CodeFormer's fidelity weight w (0..1; official default 0.5). Other models: unused.
        tile: Tile side in input pixels for images larger than that (None: whole image at once).
        tile_overlap: Pixels neighbouring tiles share (blended).
        precision: fp32, fp16 or bf16; refused where the architecture does not support it.
    """

    uses_faces = False
    reference = False

    def __init__(self, path: str, fidelity: float = 0.5, tile: int | None = None, tile_overlap: int = 32,
                 precision: str = "fp32") -> None:
        super().__init__()
        descriptor = load_descriptor(path)
        self.path = str(path)
        self.architecture = descriptor.architecture.id
        self.purpose = descriptor.purpose
        self.scale = descriptor.scale
        self.signed = self.architecture in SIGNED
        if not 0 <= fidelity <= 1:
            raise ValueError(f"PeerModel fidelity must be in [0, 1], got {fidelity}")
        self.fidelity = fidelity
        if precision not in PRECISIONS:
            raise ValueError(f"PeerModel precision must be one of {sorted(PRECISIONS)}, got '{precision}'")
        supported = {"fp32": True, "fp16": descriptor.supports_half, "bf16": descriptor.supports_bfloat16}
        if not supported[precision]:
            raise ValueError(f"{path}: {self.architecture} does not support precision {precision}")
        self.dtype = PRECISIONS[precision]
        # window transformers (SwinIR) pad inside with a reflection; their official tests mirror the input
        # to a multiple of the window first, which is what runs here
        window = getattr(descriptor.model, "window_size", 1)
        self.multiple = max(descriptor.size_requirements.multiple_of, window if isinstance(window, int) else 1, 1)
        self.minimum = descriptor.size_requirements.minimum
        self.tile, self.tile_overlap = tile, tile_overlap
        self.net = descriptor.model.eval().requires_grad_(False).to(self.dtype)

    def train(self, mode: bool = True) -> PeerModel:
        return super().train(False)  # always inference: released weights, never trained here

    def _network(self, x: torch.Tensor) -> torch.Tensor:
        """The network on [0, 1] input, with the architecture's own value range and call."""
        if self.signed:
            x = x * 2 - 1
        if self.architecture == "CodeFormer":
            y = self.net(x, weight=self.fidelity)[0]
        elif self.architecture == "GFPGAN":
            y = self.net(x, return_rgb=False)[0]
        else:
            y = self.net(x)
        if isinstance(y, (tuple, list)):
            y = y[0]
        return (y + 1) / 2 if self.signed else y

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        if self.signed and tuple(x.shape[-2:]) != (FACE_SIZE, FACE_SIZE):
            raise ValueError(f"{self.path}: {self.architecture} restores {FACE_SIZE}x{FACE_SIZE} FFHQ-aligned faces, "
                             f"got {tuple(x.shape[-2:])} (the blending baseline's face_size must be {FACE_SIZE})")
        x, h, w = mirror_pad(x, self.multiple)
        if self.minimum and min(x.shape[-2:]) < self.minimum:
            raise ValueError(f"{self.path}: {self.architecture} needs inputs of at least {self.minimum} px, "
                             f"got {tuple(x.shape[-2:])}")
        return self._network(x)[..., : h * self.scale, : w * self.scale]

    @torch.no_grad()
    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) in [0, 1] -> (B, 3, s*h, s*w) in [0, 1], float32."""
        x = lq.to(self.dtype)
        if self.tile:
            out = tiled_apply(self._padded, x, tile=self.tile, overlap=self.tile_overlap, batch=1,
                              factor=self.scale)
        else:
            out = self._padded(x)
        return out.float().clamp(0, 1)

    def extra_repr(self) -> str:
        return f"{self.architecture} x{self.scale} from {self.path}"
