"""The blending baseline HeadsUp replaces: general SR of the whole photo + a face model on aligned
face crops, pasted back (the GFPGAN / CodeFormer pipeline).

For each face (5 landmarks): the LQ face is aligned on the FFHQ 5-point template (a least-squares
similarity), restored by the face model, warped back with the inverse similarity and pasted over the
background SR through a soft mask. Two ways to do the alignment and the mask (`alignment`):

- "facexlib", as GFPGAN and CodeFormer run it (facexlib's FaceRestoreHelper): the aligned crop is
  filled with facexlib's gray (RGB 132, 133, 135) outside the photo; the mask is the warped-back
  square, eroded by 2 x scale px, then by 2 x w_edge with w_edge = sqrt(face area) // 20, and
  Gaussian-blurred with a (2 w_edge + 1) kernel (OpenCV's default sigma), all in output pixels.
- "headsup" (the earlier default): the crop mirrors the photo outside its border; the mask is the
  aligned square with a `margin` left out and a `feather` soft edge, warped back.

Either role can be any SR model mapping (B, 3, h, w) to (B, 3, s*h, s*w): a released peer
(`headsup.inference.peers.PeerModel`), a headsup export or checkpoint (`CheckpointModel`), bicubic
upsampling, or the identity (scale 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headsup.data.faces import align_faces, paste_mask
from headsup.models.reference import warp_reference


class Bicubic(nn.Module):
    """Bicubic upsampling by `scale` (scale 1: the identity)."""

    def __init__(self, scale: int = 4) -> None:
        super().__init__()
        self.scale = scale

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        if self.scale == 1:
            return lq
        return F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False).clamp(0, 1)


class CheckpointModel(nn.Module):
    """The generator of a headsup export folder or `headsup fit` checkpoint (`SRPipeline.from_pretrained`: only
    the generator is built, on its backbone folder), with the run's EMA weights when it has them, as
    `headsup test` evaluates it.

    Args:
        path: Export folder or `.ckpt` file.
        backbone: A local diffusers folder to run on instead of the recorded one.
    """

    def __init__(self, path: str, backbone: str | None = None) -> None:
        super().__init__()
        from headsup.inference.pipeline import SRPipeline

        self.generator = SRPipeline.from_pretrained(path, backbone=backbone).generator
        self.scale = self.generator.scale

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        return self.generator(lq)


class BlendingBaseline(nn.Module):
    """Background SR + face restoration on aligned crops, pasted back with feathered masks.

    Args:
        background: SR model of the whole image (defines the output scale).
        face: Face model: takes an aligned face of `face_size / face.scale` px, returns `face_size` px.
        face_size: Side of the aligned (restored) face, FFHQ template scaled to it.
        margin: Unpasted border of the aligned square (fraction of its side).
        feather: Width of the mask's soft edge (fraction of its side).
        detect: Find faces with MTCNN on the background SR when the batch has no landmarks.
        alignment: "facexlib" (GFPGAN/CodeFormer's crop fill and paste mask) or "headsup" (mirrored
            crop, `margin`/`feather` mask in the aligned square).
    """

    uses_faces = True
    reference = False

    def __init__(
        self,
        background: nn.Module,
        face: nn.Module,
        face_size: int = 512,
        margin: float = 0.05,
        feather: float = 0.04,
        detect: bool = True,
        alignment: str = "facexlib",
    ) -> None:
        super().__init__()
        self.background = background
        self.face = face
        self.scale = int(getattr(background, "scale", 1))
        self.face_scale = int(getattr(face, "scale", 1))
        if face_size % self.face_scale:
            raise ValueError(f"face_size {face_size} is not a multiple of the face model's scale {self.face_scale}")
        self.face_size = face_size
        self.margin, self.feather = margin, feather
        self.detect = detect
        if alignment not in ("facexlib", "headsup"):
            raise ValueError(f"BlendingBaseline alignment must be facexlib or headsup, got '{alignment}'")
        self.alignment = alignment
        self._annotator = None

    def _detect(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from headsup.data.faces import FaceAnnotator

        if self._annotator is None:
            self._annotator = FaceAnnotator(device=images.device)
        found = self._annotator.detect(list(images.float()))
        n = max(1, max(len(f) for f in found))
        landmarks = images.new_zeros(len(found), n, 5, 2)
        valid = torch.zeros(len(found), n, dtype=torch.bool, device=images.device)
        for i, faces in enumerate(found):
            for j, f in enumerate(faces):
                landmarks[i, j] = torch.tensor(f.landmarks, device=images.device)
                valid[i, j] = True
        return landmarks, valid

    @torch.no_grad()
    def forward(self, lq: torch.Tensor, face_landmarks: torch.Tensor | None = None,
                face_valid: torch.Tensor | None = None) -> torch.Tensor:
        """LQ (B, 3, h, w) -> (B, 3, s*h, s*w); landmarks (B, F, 5, 2) in output pixels, or detected."""
        out = self.background(lq).float().clone()  # pasted in place; never into the caller's tensor
        if face_landmarks is None:
            if not self.detect:
                return out
            face_landmarks, face_valid = self._detect(out)
        b_idx, f_idx = face_valid.nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            return out
        landmarks = face_landmarks[b_idx, f_idx].float()
        size_in = self.face_size // self.face_scale
        fill = FACEXLIB_GRAY if self.alignment == "facexlib" else None
        aligned = align_faces(lq[b_idx].float(), landmarks / self.scale, size_in, fill=fill)
        restored = self.face(aligned).float().clamp(0, 1)
        h, w = out.shape[-2:]
        faces = warp_reference(restored, landmarks, h, w)
        if self.alignment == "facexlib":
            inside = warp_reference(torch.ones_like(restored[:, :1]), landmarks, h, w)
            masks, faces = facexlib_masks(inside, self.scale, faces)
        else:
            mask = paste_mask(self.face_size, self.margin, self.feather, lq.device).expand(len(b_idx), -1, -1, -1)
            masks = warp_reference(mask, landmarks, h, w).clamp(0, 1)
        for k in range(len(b_idx)):  # faces are pasted one after the other, as GFPGAN does
            i = b_idx[k]
            out[i] = masks[k] * faces[k] + (1 - masks[k]) * out[i]
        return out


# facexlib's fill of the aligned crop outside the photo (BGR 135, 133, 132), as RGB in [0, 1]
FACEXLIB_GRAY = (132 / 255, 133 / 255, 135 / 255)


def erode(mask: torch.Tensor, k: int) -> torch.Tensor:
    """Binary-style erosion (a min filter) with a k x k window anchored at its centre, as OpenCV's
    `erode` (outside the frame counts as the maximum, so frame borders do not erode)."""
    if k <= 1:
        return mask
    a, b = k // 2, k - 1 - k // 2
    return -F.max_pool2d(F.pad(-mask, (a, b, a, b), value=-float("inf")), k, stride=1)


def facexlib_masks(inside: torch.Tensor, scale: int, faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """facexlib's paste: the warped-back square (n, 1, H, W) eroded by 2 x scale (its black border
    removed, and the face multiplied by it), then by 2 x w_edge (w_edge = sqrt(area) // 20) and
    blurred with a (2 w_edge + 1) Gaussian of OpenCV's default sigma. Returns (soft masks, faces)."""
    import kornia

    inner = erode(inside, 2 * scale)
    faces = faces * inner
    masks = []
    for m in inner:
        w_edge = int(float(m.sum()) ** 0.5) // 20
        core = erode(m[None], 2 * w_edge)
        k = 2 * w_edge + 1
        if k > 1:
            sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's sigma for a given kernel size
            core = kornia.filters.gaussian_blur2d(core, (k, k), (sigma, sigma), border_type="reflect")
        masks.append(core[0])
    return torch.stack(masks), faces
