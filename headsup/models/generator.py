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
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from headsup.degradations.resample import pil_bicubic_resize
from headsup.models.backbone import BackboneSource
from headsup.models.lora import LoRASpec, add_lora, resolve_targets
from headsup.models.reference import warp_reference, widen_conv_in
from headsup.models.runtime import InferenceRuntime


# The upsampling modes OSEDiff's training data draw from (its realesrgan.py), one per batch.
TRAIN_UPSAMPLE_MODES = ("area", "bilinear", "bicubic")


@dataclass
class SROutput:
    """What one generator pass produces.

    Attributes:
        image: SR image in [0, 1], (B, 3, sH, sW).
        latent: Predicted clean latent z0 (scaled), (B, C, h, w), with gradient.
    """

    image: torch.Tensor
    latent: torch.Tensor


class OneStepSR(InferenceRuntime, nn.Module):
    """Single-step diffusion SR generator with LoRA on the VAE encoder and UNet.

    Args:
        backbone: Where the UNet/VAE/schedule come from (a local diffusers folder or a config).
        scale: Upscaling factor from LQ to output.
        timestep: The single diffusion timestep the UNet is called at.
        unet_lora: LoRA of the UNet (rank, alpha, targets; default: OSEDiff's rank 4, alpha 8,
            `osediff_unet` targets).
        vae_lora: LoRA of the VAE encoder (default: rank 4, alpha 8, `osediff_vae_encoder`
            targets); targets that reach the decoder or `post_quant_conv` are refused.
        train_conv_in: Make the UNet's input convolution fully trainable (as OSEDiff does).
        sample_latent: Sample from the encoder's posterior in training instead of taking its mean.
        upsample: How LQ is brought to the output size before the VAE: "bicubic" (torch's, a = -0.75)
            or "pil_bicubic" (Pillow's bicubic on 8-bit values, a = -0.5, as OSEDiff's test script
            upsamples; `headsup.degradations.resample`).
        train_upsample: In training: None (as `upsample`) or "random": each batch upsampled with a mode
            drawn from torch's area, bilinear and bicubic, as OSEDiff's training data are.
        reference: Condition on a reference face and the face mask (conv_in widened, zero-initialised).
        reference_dropout: Probability of dropping the reference of a training sample.
        tiling: At inference (as every option below; `headsup.models.runtime.InferenceRuntime` has the
            details): "auto" tiles a stage whose estimated memory exceeds `memory_budget_gb`, "always", "never".
        tile_size: Tile side in latent pixels (96: 768 px tiles through SD's VAE).
        tile_overlap: Latent pixels shared by neighbouring tiles.
        tile_batch: Tiles per network call.
        norm_passes: Passes gathering whole-image GroupNorm statistics before a tiled stage (0: per tile).
        memory_budget_gb: Memory a stage may use before "auto" tiles it (None: from the free memory).
        merge_lora: Fold the LoRA updates into the base weights.
        lora_scale: Strength of the UNet's LoRA (1: as trained; lower: the fidelity-generation knob).
        reference_strength: Weight of the reference latent (1: as trained; 0: no reference).
        channels_last: Keep the UNet and VAE in the channels-last memory format.
        compile: Compile the UNet and the VAE encoder and decoder with `torch.compile`.
        cuda_graphs: On CUDA, replay each input shape's whole call as a recorded CUDA graph.
        split_group_norm: On CUDA, compute GroupNorm statistics by a reduction split across thread blocks.
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
        upsample: str = "bicubic",
        train_upsample: str | None = None,
        reference: bool = False,
        reference_dropout: float = 0.2,
        tiling: str = "auto",
        tile_size: int = 96,
        tile_overlap: int = 32,
        tile_batch: int = 4,
        norm_passes: int = 0,
        memory_budget_gb: float | None = None,
        merge_lora: bool = False,
        lora_scale: float = 1.0,
        reference_strength: float = 1.0,
        channels_last: bool = False,
        compile: bool = False,
        cuda_graphs: bool = False,
        split_group_norm: bool = False,
    ) -> None:
        super().__init__()
        parts = backbone.build()
        self.backbone_source = backbone  # teacher networks of objectives are built from it too
        self.scale = scale
        self.timestep = timestep
        self.prediction_type = parts.prediction_type
        self.sample_latent = sample_latent
        if upsample not in ("bicubic", "pil_bicubic"):
            raise ValueError(f"upsample must be 'bicubic' or 'pil_bicubic', got '{upsample}'")
        self.upsample = upsample
        if train_upsample not in (None, "random"):
            raise ValueError(f"train_upsample must be None or 'random', got '{train_upsample}'")
        self.train_upsample = train_upsample
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
        self._dropout_rng: torch.Generator | None = None  # set per rank by seed(); else the global RNG
        self.latent_channels = int(self.unet.config.in_channels)
        self.vae_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        if reference:
            widen_conv_in(self.unet, 2 * self.latent_channels + 1)

        self.requires_grad_(False)
        self.unet_lora = unet_lora or LoRASpec()
        self.vae_lora = vae_lora or LoRASpec()
        vae_targets = self.vae_lora.targets or "osediff_vae_encoder"
        decoder = [n for n in resolve_targets(self.vae, vae_targets, self.vae_lora.prefix)
                   if n.startswith(("decoder", "post_quant_conv"))]
        if decoder:  # the decoder stays frozen and adapter-free (OSEDiff)
            raise ValueError(f"vae_lora targets {vae_targets} (prefix '{self.vae_lora.prefix}') reach the VAE "
                             f"decoder ({decoder[0]}, ...): use the encoder's, e.g. prefix 'encoder.'")
        self._init_runtime(tiling, tile_size, tile_overlap, tile_batch, norm_passes, memory_budget_gb, merge_lora,
                           lora_scale, reference_strength, channels_last, compile, cuda_graphs, split_group_norm)
        self.unet_lora_modules = add_lora(self.unet, self.unet_lora, default="osediff_unet")
        self.vae_lora_modules = add_lora(self.vae, self.vae_lora, default="osediff_vae_encoder")
        self.train_conv_in = train_conv_in
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

    def upsampled(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ in [0, 1] brought to the output size (`upsample`)."""
        if self.scale == 1:
            return lq
        if self.training and self.train_upsample == "random":
            pick = int(torch.randint(len(TRAIN_UPSAMPLE_MODES), (1,), generator=self._dropout_rng))
            mode = TRAIN_UPSAMPLE_MODES[pick]
            extra = {} if mode == "area" else {"align_corners": False}
            return F.interpolate(lq, scale_factor=self.scale, mode=mode, **extra)
        if self.upsample == "pil_bicubic":
            size = (round(lq.shape[-2] * self.scale), round(lq.shape[-1] * self.scale))
            return pil_bicubic_resize(lq.clamp(0, 1), size, eight_bit=True)
        return F.interpolate(lq, scale_factor=self.scale, mode="bicubic", align_corners=False)

    def encode(self, lq: torch.Tensor) -> torch.Tensor:
        """Upsample LQ in [0, 1] and encode it to a scaled latent (input padded to the grid)."""
        up = self.upsampled(lq)
        up, _, _ = self._pad(up.clamp(0, 1) * 2 - 1)
        if self.training and self.sample_latent:
            return self.vae.encode(up).latent_dist.sample() * self.scaling_factor
        return self._encode_mode(up) * self.scaling_factor

    def _encode_mode(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior mean of the VAE encoder for x in [-1, 1] (tiled where the settings ask)."""
        f = self.vae_factor
        return self._staged("encode", lambda t: self.vae.encode(t).latent_dist.mode(), x, self.vae, Fraction(1, f))

    def prompt_embeddings(self, prompts: list[str | None] | None) -> torch.Tensor | None:
        """(B, L, D) text embeddings of per-sample prompts (None entries: the backbone's fixed
        prompt), embedded once per unique text by the backbone source; None without prompts."""
        embeds = self.backbone_source.embed_batch_prompts(prompts, getattr(self.backbone_source, "prompt", ""))
        return None if embeds is None else embeds.to(self.prompt_embeds.device)

    def denoise(self, z: torch.Tensor, extra: torch.Tensor | None = None,
                prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """One UNet call at `timestep`; returns the clean-latent estimate z0. `extra`: the
        conditioning channels appended to the input (reference latent, face mask); `prompt_embeds`:
        (B, L, D) per sample, else the fixed prompt."""
        t = torch.full((z.shape[0],), self.timestep, device=z.device, dtype=torch.long)
        cond = (self.prompt_embeds if prompt_embeds is None else prompt_embeds).to(device=z.device, dtype=z.dtype)
        cond = cond.expand(z.shape[0], -1, -1) if cond.shape[0] == 1 else cond
        x = z if extra is None else torch.cat([z, extra.to(z.dtype)], dim=1)
        pred = self.unet(x, t, encoder_hidden_states=cond).sample
        a = self.alpha_bar.to(z.dtype)
        if self.prediction_type == "epsilon":
            return (z - (1 - a).sqrt() * pred) / a.sqrt()
        if self.prediction_type == "v_prediction":
            return a.sqrt() * z - (1 - a).sqrt() * pred
        return pred

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """Frozen VAE decoder; scaled latent -> image in [0, 1] (tiled where the settings ask)."""
        x = self._staged("decode", lambda t: self.vae.decode(t).sample, z0 / self.scaling_factor, self.vae,
                         Fraction(self.vae_factor))
        return (x.clamp(-1, 1) + 1) / 2

    def seed(self, seed: int) -> None:
        """Seed the training draws: reference dropout, the training upsampling mode (SRSystem gives each
        rank its own seed)."""
        self._dropout_rng = torch.Generator().manual_seed(seed)

    def keep_reference(self, has_reference: torch.Tensor) -> torch.Tensor:
        """Which samples keep their reference: all that have one, less a random
        `reference_dropout` share in training."""
        keep = has_reference.bool()
        if self.training and self.reference_dropout > 0:
            if self._dropout_rng is None:
                draw = torch.rand(keep.shape, device=keep.device)
            else:
                draw = torch.rand(keep.shape, generator=self._dropout_rng).to(keep.device)
            keep = keep & (draw >= self.reference_dropout)
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
                z_idx = self._encode_mode(frame.to(z.dtype) * 2 - 1) * self.scaling_factor
                if self._inference():
                    z_idx = z_idx * self.reference_strength
                z_ref = z_ref.index_copy(0, idx, z_idx)
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
        prompts: list[str | None] | None = None,
    ) -> SROutput:
        """Full pass keeping the latent (what objectives such as VSD need). The reference
        arguments (see `conditioning`) are used by a `reference=True` generator, else ignored;
        `prompts`: one text per sample (None: the fixed prompt)."""
        if prompts is not None and self._inference() and len(set(prompts)) > 1:
            # tiles of several images go through the UNet together: one image at a time keeps each its prompt
            parts = [self.generate(lq[i : i + 1], *(None if a is None else a[i : i + 1] for a in
                                   (reference, landmarks, face_mask, has_reference)), prompts=prompts[i : i + 1])
                     for i in range(len(lq))]
            return SROutput(image=torch.cat([o.image for o in parts]), latent=torch.cat([o.latent for o in parts]))
        # at inference the prompts are all equal here: one row, expanded over the batch (and its tiles)
        embeds = self.prompt_embeddings(prompts[:1] if prompts is not None and self._inference() else prompts)
        out_h, out_w = lq.shape[-2] * self.scale, lq.shape[-1] * self.scale
        lq = self._prepare_inference(lq)
        z = self.encode(lq)
        extra = self.conditioning(z, reference, landmarks, face_mask, has_reference) if self.reference else None
        c = z.shape[1]
        joined = z if extra is None else torch.cat([z, extra.to(z.dtype)], dim=1)
        z0 = self._staged("unet", lambda t: self.denoise(t[:, :c], t[:, c:] if extra is not None else None, embeds),
                          joined, self.unet, Fraction(1))
        image = self.decode(z0)[..., :out_h, :out_w]
        return SROutput(image=image, latent=z0)

    def forward(self, lq: torch.Tensor, **conditioning) -> torch.Tensor:
        """LQ (B, 3, h, w) in [0, 1] -> SR (B, 3, h*scale, w*scale) in [0, 1]."""
        if self.cuda_graphs and lq.is_cuda and self._inference() and all(v is None for v in conditioning.values()):
            return self._graphed(lq)
        self._graph = None
        return self.generate(lq, **conditioning).image
