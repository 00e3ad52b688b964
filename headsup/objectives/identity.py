"""Identity loss: 1 - cosine similarity of face-recognition embeddings of SR and HQ faces.

Each valid face of the batch (`face_boxes`, `face_landmarks`, `face_valid`) is cut out of SR and
HQ the same way (differentiably; `IdentityNet.alignment`: facenet's box-and-margin crop by default)
and embedded by a frozen InceptionResnetV1;
the HQ embedding is a constant target. HeadsUp weights this term 4.0.
"""

from __future__ import annotations

import torch

from headsup.models.identity import IdentityNet
from headsup.objectives.base import Objective, StepContext


class IdentityLoss(Objective):
    """1 - cos(e(SR face), e(HQ face)), averaged over the batch's valid faces.

    Args:
        identity: The frozen face-recognition network.
        weight: Multiplier of the term (HeadsUp: 4.0).
        start_step: Generator update from which it is active.
    """

    def __init__(self, identity: IdentityNet, weight: float = 4.0, start_step: int = 0) -> None:
        super().__init__(weight, start_step)
        self.identity = identity

    def generator_loss(self, ctx: StepContext) -> torch.Tensor:
        batch = ctx.batch
        if "face_landmarks" not in batch or not bool(batch["face_valid"].any()):
            return ctx.sr.sum() * 0.0
        b_idx, f_idx = batch["face_valid"].nonzero(as_tuple=True)
        landmarks = batch["face_landmarks"][b_idx, f_idx]
        boxes = batch["face_boxes"][b_idx, f_idx] if "face_boxes" in batch else None
        e_sr = self.identity(ctx.sr[b_idx], landmarks, boxes)
        with torch.no_grad():
            e_hq = self.identity(ctx.hq[b_idx], landmarks, boxes)
        return (1 - (e_sr * e_hq).sum(1)).mean()
