"""OneStepSR: the single-step diffusion super-resolution generator of OSEDiff.

    x_up = bicubic(x_LQ, s)                        (LQ upsampled to the output size)
    z    = E_LoRA(x_up) * c                        (VAE encoder with LoRA, c = scaling factor)
    eps  = UNet_LoRA(z, t=999, c_text)             (one call at the last timestep)
    z0   = (z - sqrt(1 - abar_t) eps) / sqrt(abar_t)
    x_SR = D(z0 / c)                               (frozen VAE decoder)

(OSEDiff, Wu et al. 2024, Sec. 3.2.) The LQ latent is used directly as the noisy
latent at t = 999; z0 is the clean-latent estimate from the epsilon (or v) prediction.
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
    ) -> None:
        super().__init__()
        parts = backbone.build()
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
        return self

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

    def denoise(self, z: torch.Tensor) -> torch.Tensor:
        """One UNet call at `timestep`; returns the clean-latent estimate z0."""
        t = torch.full((z.shape[0],), self.timestep, device=z.device, dtype=torch.long)
        cond = self.prompt_embeds.to(dtype=z.dtype).expand(z.shape[0], -1, -1)
        pred = self.unet(z, t, encoder_hidden_states=cond).sample
        a = self.alpha_bar.to(z.dtype)
        if self.prediction_type == "epsilon":
            return (z - (1 - a).sqrt() * pred) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * z - (1 - a).sqrt() * pred
        return pred

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Frozen VAE decoder; scaled latent -> image in [0, 1]."""
        return ((self.vae.decode(z0 / self.scaling_factor).sample.clamp(-1, 1) + 1) / 2)

    def generate(self, lq: torch.Tensor) -> SROutput:
        """Full pass keeping the latent (what objectives such as VSD need)."""
        out_h, out_w = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        z0 = self.denoise(self.encode(lq))
        image = self.decode(z0)[..., :out_h, :out_w]
        return SROutput(image=image, latent=z0)

    def forward(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ (B, 3, h, w) in [0, 1] -> SR (B, 3, h*scale, w*scale) in [0, 1]."""
        return self.generate(lq).image
