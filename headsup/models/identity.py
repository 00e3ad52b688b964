"""Frozen face-recognition network: facenet-pytorch's InceptionResnetV1 from a local weights file.

Used for the identity loss, the identity metrics and grouping photos by person in `prepare
references`. Faces are cut out the way facenet's nets were trained and evaluated (alignment
"facenet", the default): the MTCNN box plus a 32 px margin at 160 px (davidsandberg/facenet's
evaluation alignment, the margin applied in output pixels as facenet-pytorch's `extract_face`),
resized to 160 x 160: the eyes about 62 px apart (astronaut, grace_hopper). The FFHQ 5-point
template ("ffhq", a similarity warp at 160 px) is an option; it puts the eyes 39 px apart, the face
at 0.63 of the scale the net was trained on, with hair and background around it.
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
        size: Side of the face crop fed to the network.
        alignment: "facenet" (the detector's box plus `margin`, as the net was trained) or "ffhq"
            (the FFHQ 5-point template, as earlier headsup versions).
        margin: Margin around the box in output pixels, for "facenet" (32 at 160 px).
    """

    def __init__(self, weights: str, size: int = 160, alignment: str = "facenet", margin: int = 32) -> None:
        super().__init__()
        if alignment not in ("facenet", "ffhq"):
            raise ValueError(f"identity alignment must be 'facenet' or 'ffhq', got '{alignment}'")
        self.net = load_identity_net(weights)
        self.size, self.alignment, self.margin = size, alignment, margin

    def train(self, mode: bool = True) -> IdentityNet:
        super().train(mode)
        self.net.eval()  # batch-norm statistics stay frozen
        return self

    def crops(self, images: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """The faces as the net sees them (N, 3, size, size). images: (N, 3, H, W) in [0, 1];
        landmarks: (N, 5, 2) and boxes: (N, 4) MTCNN's, in the images' pixels. Without boxes (aligned
        faces, references) "facenet" takes the box MTCNN draws around such landmarks."""
        from headsup.data.faces import align_faces, box_from_landmarks, facenet_crops

        if self.alignment == "ffhq":
            return align_faces(images.float(), landmarks.float(), self.size)
        boxes = box_from_landmarks(landmarks.float()) if boxes is None else boxes
        return facenet_crops(images.float(), boxes, self.size, self.margin)

    def forward(self, images: torch.Tensor, landmarks: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """Unit embeddings (N, 512) of the faces given by `landmarks` and `boxes` (see `crops`)."""
        return self.embed_aligned(self.crops(images, landmarks, boxes))

    def embed_aligned(self, faces: torch.Tensor) -> torch.Tensor:
        """Faces already aligned at `size` (N, 3, size, size) in [0, 1] -> (N, 512) unit vectors."""
        return F.normalize(self.net((faces * 255 - 127.5) / 128.0).float(), dim=1)  # facenet's standardisation
