"""OneStepSR: the single-step diffusion super-resolution generator of OSEDiff.

    x_up = bicubic(x_LQ, s)                        (LQ upsampled to the output size)
    z    = E_LoRA(x_up) * c                        (VAE encoder with LoRA, c = scaling factor)
    eps  = UNet_LoRA(z, t=999, c_text)             (one call at the last timestep)
    z0   = (z - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x_SR = D(z0 / c)                               (frozen VAE decoder)

(OSEDiff, Wu et al. 2024, Sec. 3.2.) The LQ latent is used directly as the noisy
latent at t = 999; z0 is the clean-latent estimate from the epsilon (or v) prediction.

With `reference=True` (HeadsUp's reference-based identity), the UNet input is
[z, z_ref, m]: z_ref is the latent of an HQ reference face of the same person, warped
from the FFHQ-aligned crop onto the face's position in the image (from its 5 landmarks),
and m the soft face mask at latent resolution. conv_in is widened for these channels
with zero weights, so at initialisation the UNet computes exactly what it did before;
in training the reference is dropped (zeros) with probability `reference_dropout`.
Images are in [0, 1] outside, [-1, 1] inside the VAE. Sizes that are not a multiple
of the latent grid (8 x 8 = 64 px for SD) are reflect-padded and cropped back, so the output is exactly
input size x scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from headsup.models.backbone import BackboneSource
from headsup.models.lora import UNET_TARGETS, VAE_ENCODER_TARGETS, LoRASpec, add_lora


@dataclass
class SROutput:
    """What one generator pass produces.

    Attributes:
        image: SR image in [0, 1], (B, 3, sH, sW).
        latent: Predicted clean latent z0 (scaled), (B, C, h, w), with gradient.
    """

    image: torch.Tensor
    latent: torch.Tensor


class OneStepSR(nn.Module):
    """Single-step diffusion SR generator with LoRA on the VAE encoder and UNet.

    Args:
        backbone: Where the UNet/VAE/schedule come from (a local diffusers folder or a config).
        scale: Upscaling factor from LQ to output.
        timestep: The single diffusion timestep the UNet is called at.
        unet_lora: LoRA of the UNet (rank, alpha, target module suffixes).
        vae_lora: LoRA of the VAE encoder; its prefix keeps it off the decoder.
        train_conv_in: Make the UNet's input convolution fully trainable (as OSEDiff does).
        sample_latent: Sample from the encoder's posterior in training instead of taking its mean.
        reference: Condition on a reference face and the face mask (conv_in widened, zero-initialised).
        reference_dropout: Probability of dropping the reference of a training sample.
        latent_tile: At inference, run the UNet on overlapping latent tiles of this side when the
            latent is larger (None: never; see `headsup.inference.tiling`).
        latent_overlap: Latent pixels shared by neighbouring tiles.
        tile_batch: Tiles per UNet call.
        vae_tiling: At inference, encode/decode large images in tiles (diffusers' VAE tiling).
        merge_lora: At inference, fold the LoRA updates into the base weights (one matmul per
            layer instead of three); unfolded again when training resumes.
    """

    def __init__(
        self,
        backbone: BackboneSource,
        scale: int = 4,
        timestep: int = 999,
        unet_lora: LoRASpec | None = None,
        vae_lora: LoRASpec | None = None,
        train_conv_in: bool = True,
        sample_latent: bool = False,
        reference: bool = False,
        reference_dropout: float = 0.2,
        latent_tile: int | None = None,
        latent_overlap: int = 32,
        tile_batch: int = 4,
        vae_tiling: bool = False,
        merge_lora: bool = False,
    ) -> None:
        super().__init__()
        parts = backbone.build()
        self.backbone_source = backbone  # teacher networks of objectives are built from it too
        self.scale = scale
        self.timestep = timestep
        self.prediction_type = parts.prediction_type
        self.sample_latent = sample_latent
        self.vae = parts.vae
        self.unet = parts.unet
        self.scaling_factor = float(self.vae.config.scaling_factor)
        # input sizes must divide by the VAE's and the UNet's downsampling (8 x 8 = 64 for SD)
        self.size_multiple = 2 ** (len(self.vae.config.block_out_channels) - 1) * 2 ** (
            len(self.unet.config.block_out_channels) - 1
        )
        self.register_buffer("alpha_bar", parts.alphas_cumprod[timestep].clone(), persistent=False)
        self.register_buffer("prompt_embeds", parts.prompt_embeds.detach().clone(), persistent=False)
        if not 0 <= reference_dropout <= 1:
            raise ValueError(f"reference_dropout must be within [0, 1], got {reference_dropout}")
        self.reference = reference
        self.reference_dropout = reference_dropout
        self.latent_tile, self.latent_overlap, self.tile_batch = latent_tile, latent_overlap, tile_batch
        self.vae_tiling = vae_tiling
        self.merge_lora = merge_lora
        self._merged = False
        self.latent_channels = int(self.unet.config.in_channels)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if reference:
            widen_conv_in(self.unet, 2 * self.latent_channels + 1)

        self.requires_grad_(False)
        self.unet_lora = unet_lora or LoRASpec(rank=4, alpha=4.0, targets=list(UNET_TARGETS))
        self.vae_lora = vae_lora or LoRASpec(rank=4, alpha=4.0, targets=list(VAE_ENCODER_TARGETS), prefix="encoder.")
        if not self.vae_lora.prefix.startswith("encoder"):
            raise ValueError(f"vae_lora.prefix must select the encoder, got '{self.vae_lora.prefix}'")
        self.unet_lora_modules = add_lora(self.unet, self.unet_lora)
        self.vae_lora_modules = add_lora(self.vae, self.vae_lora)
        if train_conv_in:
            self.unet.conv_in.requires_grad_(True)
        self.vae.decoder.requires_grad_(False)
        self.vae.post_quant_conv.requires_grad_(False)
        self.train()

    def train(self, mode: bool = True) -> OneStepSR:
        super().train(mode)
        self.vae.decoder.eval()
        if mode and getattr(self, "_merged", False):
            self.set_lora_merged(False)
        return self

    def set_lora_merged(self, merged: bool) -> None:
        """Fold the LoRA updates into (or back out of) the base weights of every adapted layer."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if merged == self._merged:
            return
        for module in self.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge() if merged else module.unmerge()
        self._merged = merged

    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = self.size_multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, h, w

    def encode(self, lq: torch.Tensor) -> torch.Tensor:
        """Bicubic-upsample LQ in [0, 1] and encode it to a scaled latent (input padded to the grid)."""
        up = F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False) if self.scale != 1 else lq
        up, _, _ = self._pad(up.clamp(0, 1) * 2 - 1)
        posterior = self.vae.encode(up).latent_dist
        z = posterior.sample() if (self.training and self.sample_latent) else posterior.mode()
        return z * self.scaling_factor

    def denoise(self, z: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet call at `timestep`; returns the clean-latent estimate z0. `extra`: the
        conditioning channels appended to the input (reference latent, face mask)."""
        t = torch.full((z.shape[0],), self.timestep, device=z.device, dtype=torch.long)
        cond = self.prompt_embeds.to(dtype=z.dtype).expand(z.shape[0], -1, -1)
        x = z if extra is None else torch.cat([z, extra.to(z.dtype)], dim=1)
        pred = self.unet(x, t, encoder_hidden_states=cond).sample
        a = self.alpha_bar.to(z.dtype)
        if self.prediction_type == "epsilon":
            return (z - (1 - a).sqrt() * pred) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * z - (1 - a).sqrt() * pred
        return pred

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Frozen VAE decoder; scaled latent -> image in [0, 1]."""
        return ((self.vae.decode(z0 / self.scaling_factor).sample.clamp(-1, 1) + 1) / 2)

    def keep_reference(self, has_reference: torch.Tensor) -> torch.Tensor:
        """Which samples keep their reference: all that have one, less a random
        `reference_dropout` share in training."""
        keep = has_reference.bool()
        if self.training and self.reference_dropout > 0:
            keep = keep & (torch.rand(keep.shape, device=keep.device) >= self.reference_dropout)
        return keep

    def conditioning(
        self,
        z: torch.Tensor,
        reference: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        has_reference: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The extra UNet input channels [z_ref, m] for latents z (B, C, h, w).

        reference: (B, 3, R, R) FFHQ-aligned reference faces in [0, 1]; landmarks: (B, 5, 2) of
        the face they belong to, in output pixels; face_mask: (B, 1, H, W) in output pixels;
        has_reference: (B,) which samples have a usable reference. Missing parts are zeros.
        """
        b, _, h, w = z.shape
        z_ref = z.new_zeros(b, self.latent_channels, h, w)
        if reference is not None and landmarks is not None:
            keep = torch.ones(b, dtype=torch.bool, device=z.device) if has_reference is None else has_reference
            idx = self.keep_reference(keep.to(z.device)).nonzero().flatten()
            if idx.numel():
                frame = warp_reference(reference[idx].float(), landmarks[idx].float(), h * self.vae_factor,
                                       w * self.vae_factor)
                posterior = self.vae.encode(frame.to(z.dtype) * 2 - 1).latent_dist
                z_ref = z_ref.index_copy(0, idx, posterior.mode() * self.scaling_factor)
        if face_mask is None:
            mask = z.new_zeros(b, 1, h, w)
        else:
            fh, fw = face_mask.shape[-2:]
            padded = F.pad(face_mask.to(z.dtype), (0, w * self.vae_factor - fw, 0, h * self.vae_factor - fh))
            mask = F.interpolate(padded, size=(h, w), mode="area")
        return torch.cat([z_ref, mask], dim=1)

    def generate(
        self,
        lq: torch.Tensor,
        reference: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        face_mask: torch.Tensor | None = None,
        has_reference: torch.Tensor | None = None,
    ) -> SROutput:
        """Full pass keeping the latent (what objectives such as VSD need). The reference
        arguments (see `conditioning`) are used by a `reference=True` generator, else ignored."""
        out_h, out_w = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        tiled = not self.training and not torch.is_grad_enabled()
        if tiled and self.merge_lora:
            self.set_lora_merged(True)
        if tiled and self.vae_tiling:
            self.vae.enable_tiling()
        try:
            z = self.encode(lq)
            extra = self.conditioning(z, reference, landmarks, face_mask, has_reference) if self.reference else None
            if tiled and self.latent_tile is not None:
                from headsup.inference.tiling import tiled_apply

                c = z.shape[1]
                joined = z if extra is None else torch.cat([z, extra.to(z.dtype)], dim=1)
                z0 = tiled_apply(lambda t: self.denoise(t[:, :c], t[:, c:] if extra is not None else None), joined,
                                 self.latent_tile, self.latent_overlap, self.tile_batch)
            else:
                z0 = self.denoise(z, extra)
            image = self.decode(z0)[..., :out_h, :out_w]
        finally:
            if tiled and self.vae_tiling:
                self.vae.disable_tiling()
        return SROutput(image=image, latent=z0)

    def forward(self, lq: torch.Tensor, **conditioning) -> torch.Tensor:
        """LQ (B, 3, h, w) in [0, 1] -> SR (B, 3, h*scale, w*scale) in [0, 1]."""
        return self.generate(lq, **conditioning).image


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
