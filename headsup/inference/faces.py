"""Face inputs of face-aware models for photos that come without annotations (`headsup predict`).

Training and test sets carry MTCNN boxes and landmarks from their manifests; a photo to enhance
does not. `PredictFaces` detects the faces on the bicubic-upsampled LQ (output pixels, as the
generator expects them), builds the soft face mask, and aligns the face of the person's reference
photo to the FFHQ template, as `ReferenceLoader` does for training items. The reference belongs
to the largest face of the photo (face slot 0), as in training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headsup.data.datasets import pad_faces
from headsup.data.faces import FaceAnnotator, align_faces, soft_face_mask


class PredictFaces:
    """Faces, face mask and aligned reference of one photo for a face-aware generator.

    Args:
        reference_size: Side of the aligned reference face.
        max_faces: Face slots (the largest faces are kept).
        detect_size: Longest side of the copy MTCNN runs on.
    """

    def __init__(self, reference_size: int = 512, max_faces: int = 4, detect_size: int = 1024) -> None:
        self.reference_size = reference_size
        self.max_faces = max_faces
        self.detect_size = detect_size
        self._annotator: FaceAnnotator | None = None

    def annotator(self, device: torch.device) -> FaceAnnotator:
        if self._annotator is None or self._annotator.device != device:
            self._annotator = FaceAnnotator(device=device, detect_size=self.detect_size)
        return self._annotator

    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, scale: int, reference: torch.Tensor | None = None,
                 reference_name: str = "") -> tuple[dict, list[str]]:
        """Batch fields (face_boxes, face_landmarks, face_valid, face_mask, and reference /
        has_reference when a reference photo is given) for one LQ (1, 3, h, w) in [0, 1], and notes
        on what could not be used. Detection and alignment run in fp32 under any autocast."""
        with torch.autocast(device_type=lq.device.type, enabled=False):
            return self._faces(lq, scale, reference, reference_name)

    def _faces(self, lq: torch.Tensor, scale: int, reference: torch.Tensor | None,
               reference_name: str) -> tuple[dict, list[str]]:
        up = F.interpolate(lq.float(), scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        annotator = self.annotator(lq.device)
        faces = annotator.detect([up[0]])[0][: self.max_faces]
        notes = [] if faces else ["no face found: enhanced without face conditioning"]
        boxes = torch.tensor([f.box for f in faces], dtype=torch.float32).reshape(-1, 4)
        landmarks = torch.tensor([f.landmarks for f in faces], dtype=torch.float32).reshape(-1, 5, 2)
        fields = {k: v[None].to(lq.device) for k, v in
                  pad_faces(boxes, landmarks, torch.ones(len(faces), dtype=torch.bool), self.max_faces).items()}
        fields["face_mask"] = soft_face_mask(fields["face_boxes"], fields["face_valid"], *up.shape[-2:])
        if reference is None or reference.numel() == 0:
            return fields, notes
        aligned = torch.zeros(1, 3, self.reference_size, self.reference_size, device=lq.device)
        found = annotator.detect([reference[0].float()])[0]
        if not found:
            notes.append(f"no face found in the reference {reference_name}: not used")
        elif faces:
            points = torch.tensor([found[0].landmarks], dtype=torch.float32, device=lq.device)
            aligned = align_faces(reference.float(), points, self.reference_size).clamp(0, 1)
        fields.update(reference=aligned, has_reference=torch.tensor([bool(found and faces)], device=lq.device))
        return fields, notes
