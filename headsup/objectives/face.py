"""Face-region losses: MSE and LPIPS on face crops cut from SR and HQ at the batch's face boxes.

HeadsUp supervises faces separately from the whole image (face MSE weight 1.0, face LPIPS
0.8). Crops are square boxes around each valid face (`face_boxes`, `face_valid` in the
batch, HQ pixels), resampled to a fixed size with kornia's differentiable crop-and-resize,
so the gradient reaches the generator through the crop. Samples without faces add nothing;
a batch without any face gives an exact zero that still depends on the output (DDP sees
every parameter used).
"""

from __future__ import annotations

import kornia
import torch

from headsup.models.lpips import LPIPS
from headsup.objectives.base import Objective, StepContext, range_mse


def face_crops(images: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor, size: int,
               expand: float = 1.0) -> torch.Tensor:
    """(N, C, size, size) square crops of all valid faces of a batch, in batch order.

    images: (B, C, H, W); boxes: (B, F, 4) x1, y1, x2, y2 in continuous pixel coordinates;
    valid: (B, F). Each crop is the square of the box's longer side (times `expand`) around
    its centre; parts outside the image read as zeros.
    """
    b_idx, f_idx = valid.nonzero(as_tuple=True)
    if b_idx.numel() == 0:
        return images.new_zeros(0, images.shape[1], size, size)
    box = boxes[b_idx, f_idx].float()
    cx, cy = (box[:, 0] + box[:, 2]) / 2, (box[:, 1] + box[:, 3]) / 2
    half = torch.maximum(box[:, 2] - box[:, 0], box[:, 3] - box[:, 1]) * expand / 2
    # corner pixel centres (kornia's integer coordinates) of the square [c - half, c + half)
    x1, y1, x2, y2 = cx - half, cy - half, cx + half - 1, cy + half - 1
    corners = torch.stack([torch.stack([x1, y1], -1), torch.stack([x2, y1], -1),
                           torch.stack([x2, y2], -1), torch.stack([x1, y2], -1)], 1)
    return kornia.geometry.transform.crop_and_resize(images[b_idx], corners.to(images.dtype), (size, size),
                                                     mode="bilinear", padding_mode="zeros", align_corners=True)


class _FaceObjective(Objective):
    def __init__(self, weight: float, start_step: int, size: int, expand: float) -> None:
        super().__init__(weight, start_step)
        self.size = size
        self.expand = expand

    def crops(self, ctx: StepContext) -> tuple[torch.Tensor, torch.Tensor] | None:
        batch = ctx.batch
        if "face_boxes" not in batch or not bool(batch["face_valid"].any()):
            return None
        sr = face_crops(ctx.sr.float(), batch["face_boxes"], batch["face_valid"], self.size, self.expand)
        hq = face_crops(ctx.hq.float(), batch["face_boxes"], batch["face_valid"], self.size, self.expand)
        return sr, hq

    def generator_loss(self, ctx: StepContext) -> torch.Tensor:
        pair = self.crops(ctx)
        if pair is None:
            return ctx.sr.sum() * 0.0
        return self.distance(*pair)

    def distance(self, sr: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FaceMSE(_FaceObjective):
    """Mean squared error on face crops.

    Args:
        weight: Multiplier of the term (HeadsUp: 1.0).
        start_step: Generator update from which it is active.
        size: Side the face crops are resampled to.
        expand: Crop side as a multiple of the face box's longer side.
        range: Pixel range the error is measured in, as `PixelMSE`'s: "-1..1" (default, the
            convention of the whole-image term) or "0..1".
    """

    def __init__(self, weight: float = 1.0, start_step: int = 0, size: int = 128, expand: float = 1.0,
                 range: str = "-1..1") -> None:  # noqa: A002
        super().__init__(weight, start_step, size, expand)
        range_mse(torch.zeros(1), torch.zeros(1), range)
        self.range = range

    def distance(self, sr: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        return range_mse(sr, hq, self.range)


class FaceLPIPS(_FaceObjective):
    """LPIPS (VGG) on face crops; needs the same local VGG16 file as `LPIPSLoss` (one shared
    frozen network when both use the same files).

    Args:
        vgg_weights: torchvision VGG16 state dict (`vgg16-397923af.pth`).
        lpips_weights: LPIPS linear-layer weights; default (None): the LPIPS v0.1 `vgg.pth`
            torchmetrics ships.
        weight: Multiplier of the term (HeadsUp: 0.8).
        start_step: Generator update from which it is active.
        size: Side the face crops are resampled to.
        expand: Crop side as a multiple of the face box's longer side.
    """

    def __init__(self, vgg_weights: str, lpips_weights: str | None = None, weight: float = 0.8,
                 start_step: int = 0, size: int = 128, expand: float = 1.0) -> None:
        super().__init__(weight, start_step, size, expand)
        self.lpips = LPIPS.shared(vgg_weights, lpips_weights, owner="FaceLPIPS")

    def distance(self, sr: torch.Tensor, hq: torch.Tensor) -> torch.Tensor:
        return self.lpips(sr, hq).mean()
