"""Reference conditioning of the generator's UNet (HeadsUp's reference-based identity).

The UNet input becomes [z, z_ref, m]: `widen_conv_in` gives conv_in the extra input channels with zero
weights (so at initialisation the UNet computes what it did before), and `warp_reference` places the
FFHQ-aligned reference face onto the face's position in the output frame, from its 5 landmarks, to be
encoded as z_ref.
"""

from __future__ import annotations

import torch
from torch import nn


def widen_conv_in(unet: nn.Module, in_channels: int) -> None:
    """Give the UNet's input convolution `in_channels` inputs; the new ones start at zero."""
    old = unet.conv_in
    new = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                    bias=old.bias is not None).to(old.weight.device, old.weight.dtype)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, : old.in_channels] = old.weight
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.requires_grad_(old.weight.requires_grad)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)


def warp_reference(reference: torch.Tensor, landmarks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Place FFHQ-aligned faces (B, 3, R, R) onto frames of (height, width) at the faces whose
    5 landmarks (B, 5, 2) are given; zeros elsewhere."""
    import kornia

    from headsup.data.faces import alignment_matrix

    # the exact inverse of the alignment that made the aligned face (a least-squares fit the other
    # way round is a slightly different transform when the landmarks do not fit the template exactly)
    align = alignment_matrix(landmarks, reference.shape[-1])
    matrix = kornia.geometry.transform.invert_affine_transform(align)
    return kornia.geometry.transform.warp_affine(reference, matrix.to(reference.dtype), (height, width),
                                                 mode="bilinear", padding_mode="zeros", align_corners=True)
