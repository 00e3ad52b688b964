"""Face geometry that travels with the image through crops, flips and resizes.

Coordinates are continuous pixel coordinates (pixel i covers [i, i + 1)), x along columns.
Boxes are (N, 4) as x1, y1, x2, y2; landmarks are (N, 5, 2) as (x, y) in the MTCNN / FFHQ
5-point order: left eye, right eye, nose, left mouth corner, right mouth corner (left and
right as seen in the image). These match `F.interpolate(..., align_corners=False)` and
tensor slicing/flipping, so a face loss computed on transformed boxes stays on the face.
"""

from __future__ import annotations

import torch

# After a horizontal flip the subject's left eye is on the image's right: swap the pairs.
_FLIP_ORDER = [1, 0, 2, 4, 3]


def crop(boxes: torch.Tensor, landmarks: torch.Tensor, top: int, left: int, height: int, width: int):
    """Geometry after `image[..., top:top + height, left:left + width]`.

    Boxes are clipped to the crop. Returns (boxes, landmarks, keep) where `keep` marks faces
    that still have at least half of their box area inside the crop.
    """
    shift = boxes.new_tensor([left, top, left, top])
    moved = boxes - shift
    clipped = torch.stack(
        [moved[:, 0].clamp(0, width), moved[:, 1].clamp(0, height), moved[:, 2].clamp(0, width),
         moved[:, 3].clamp(0, height)], dim=1,
    )
    area = (moved[:, 2] - moved[:, 0]).clamp_min(0) * (moved[:, 3] - moved[:, 1]).clamp_min(0)
    inside = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    keep = inside >= 0.5 * area.clamp_min(1e-6)
    return clipped, landmarks - landmarks.new_tensor([left, top]), keep


def hflip(boxes: torch.Tensor, landmarks: torch.Tensor, width: int):
    """Geometry after `image.flip(-1)` of an image `width` pixels wide."""
    flipped_boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
    flipped = landmarks.clone()
    flipped[..., 0] = width - landmarks[..., 0]
    return flipped_boxes, flipped[:, _FLIP_ORDER]


def resize(boxes: torch.Tensor, landmarks: torch.Tensor, scale_y: float, scale_x: float):
    """Geometry after resizing the image by (scale_y, scale_x), e.g. 1 / 4 from HQ to LQ."""
    return boxes * boxes.new_tensor([scale_x, scale_y, scale_x, scale_y]), landmarks * landmarks.new_tensor(
        [scale_x, scale_y]
    )
