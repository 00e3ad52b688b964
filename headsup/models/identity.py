"""Frozen face-recognition network: facenet-pytorch's InceptionResnetV1 from a local weights file.

Used for the identity loss (embeddings of SR and HQ faces aligned to the FFHQ 5-point template
at 160 px, facenet's input size) and for grouping photos by person in `prepare references`.
Nothing is downloaded: the weights (e.g. the VGGFace2 release) come from a local state dict.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def load_identity_net(weights: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """InceptionResnetV1 with weights from a local state-dict file, frozen, in eval mode."""
    from facenet_pytorch import InceptionResnetV1

    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"face-recognition weights (InceptionResnetV1 state dict) not found: {path}")
    net = InceptionResnetV1(pretrained=None, classify=False)
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = {k: v for k, v in state.items() if not k.startswith("logits.")}
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: not InceptionResnetV1 weights (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    return net.requires_grad_(False).eval().to(device)


class IdentityNet(nn.Module):
    """Unit-norm identity embeddings of faces given by their 5 landmarks.

    Args:
        weights: Local InceptionResnetV1 state dict (facenet-pytorch, e.g. VGGFace2).
        size: Side of the aligned face crop fed to the network.
    """

    def __init__(self, weights: str, size: int = 160) -> None:
        super().__init__()
        self.net = load_identity_net(weights)
        self.size = size

    def train(self, mode: bool = True) -> IdentityNet:
        super().train(mode)
        self.net.eval()  # batch-norm statistics stay frozen
        return self

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """images: (N, 3, H, W) in [0, 1]; landmarks: (N, 5, 2) in their pixels -> (N, 512)."""
        from headsup.data.faces import align_faces

        return self.embed_aligned(align_faces(images.float(), landmarks.float(), self.size))

    def embed_aligned(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces already aligned at `size` (N, 3, size, size) in [0, 1] -> (N, 512) unit vectors."""
        return F.normalize(self.net((faces * 255 - 127.5) / 128.0).float(), dim=1)  # facenet's standardisation
