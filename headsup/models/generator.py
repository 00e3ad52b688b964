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

import os
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

from headsup.degradations.resample import pil_bicubic_resize
from headsup.models.backbone import BackboneSource
from headsup.models.lora import LoRASpec, add_lora, resolve_targets
from headsup.models.norm import use_split_group_norm


# Peak activation memory of an untiled stage over its largest feature map (first-level channels at
# full resolution, in the elements of the compute dtype): measured on the CPU for the SD 2.1-base
# VAE/UNet at 512-1024 px, the larger of fp32 (6.0 / 34 / 7.5) and bf16 autocast (9.0 / 38 / 9.6,
# higher because GroupNorm computes in fp32), benchmarks/RESULTS.md "Memory of the untiled stages".
# `tiling: auto` compares factor x map bytes with the budget before running a stage.
STAGE_PEAK_FACTOR = {"encode": 9.0, "unet": 38.0, "decode": 9.6}
# The factors come from the CPU allocator. On an H200, whole untiled calls in bf16 autocast peaked
# at 1.42-1.53x the largest stage estimate once the 3.55 GiB of fp32 weights are taken off (512 to
# 3840x2160 output; cuDNN workspaces, the caching allocator, the other stages' tensors): by default
# "auto" budgets 60% of the free GPU memory, which leaves that margin.
CUDA_BUDGET_SHARE = 0.6
# Generator settings that shape inference only (not the trained weights): `predict --ckpt_path` and
# `headsup-tools enhance` take them from the command line; a recorded CUDA graph is keyed on them.
INFERENCE_OPTIONS = ("tiling", "tile_size", "tile_overlap", "tile_batch", "norm_passes", "memory_budget_gb",
                     "merge_lora", "lora_scale", "reference_strength", "channels_last", "compile", "cuda_graphs",
                     "split_group_norm", "upsample")


# The upsampling modes OSEDiff's training data draw from (its realesrgan.py), one per batch.
TRAIN_UPSAMPLE_MODES = ("area", "bilinear", "bicubic")


def _available_ram() -> float:
    """MemAvailable of /proc/meminfo in bytes (physical memory where that file is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


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
        tiling: At inference: "auto" tiles a stage (VAE encoder, UNet, VAE decoder) whose
            estimated activation memory exceeds `memory_budget_gb`, "always" tiles every stage
            larger than one tile, "never" runs whole images. Training never tiles.
        tile_size: Tile side in latent pixels (96: 768 px tiles through SD's VAE).
        tile_overlap: Latent pixels shared by neighbouring tiles.
        tile_batch: Tiles per network call.
        norm_passes: Passes that gather whole-image GroupNorm statistics before a tiled stage
            runs (0: each tile normalises itself; see `headsup.models.tiling`).
        memory_budget_gb: Memory one stage may use before "auto" tiles it; None: `CUDA_BUDGET_SHARE`
            of the free CUDA memory at call time, or half the available RAM on the CPU.
        merge_lora: At inference, fold the LoRA updates into the base weights (one matmul per
            layer instead of three); unfolded again when training resumes.
        lora_scale: At inference, the strength of the UNet's LoRA (1: as trained; lower stays
            closer to the pretrained UNet: the fidelity-generation knob).
        reference_strength: At inference, the weight of the reference latent (1: as trained; 0: no reference).
        channels_last: At inference, keep the UNet and VAE in the channels-last memory format (faster
            convolutions on tensor-core GPUs).
        compile: At inference, compile the UNet and the VAE encoder and decoder with `torch.compile`
            (once; the first call of each tile shape pays for compilation).
        cuda_graphs: At inference on a CUDA device, record the whole call (encode, UNet, decode) as a
            CUDA graph and replay it for later inputs of the same shape, dtype and settings: no
            Python or kernel-launch overhead per call (see benchmarks/RESULTS.md). The first call
            of a new shape runs eagerly, then records (two more passes). Calls that tile a stage
            or pass a reference run eagerly. One graph is kept (the last shape).
        split_group_norm: At inference on a CUDA device, compute GroupNorm statistics with a reduction
            split across many thread blocks (`headsup.models.norm`) instead of PyTorch's kernel, which
            uses one block per (sample, group) and took 40% of a 512x512 call on an H200. Same function;
            its speed-up is not measured yet.
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
        if tiling not in ("auto", "always", "never"):
            raise ValueError(f"tiling must be 'auto', 'always' or 'never', got '{tiling}'")
        if not 0 <= tile_overlap < tile_size:
            raise ValueError(f"tile_overlap must be within [0, tile_size), got {tile_overlap} for {tile_size}")
        self.tiling, self.tile_size, self.tile_overlap, self.tile_batch = tiling, tile_size, tile_overlap, tile_batch
        self.norm_passes, self.memory_budget_gb = norm_passes, memory_budget_gb
        self.merge_lora, self.lora_scale, self.reference_strength = merge_lora, lora_scale, reference_strength
        self._merged = False
        self._lora_scale_applied = 1.0
        self.channels_last, self.compile = channels_last, compile
        self._compiled = False
        self.cuda_graphs = cuda_graphs
        self.split_group_norm = split_group_norm
        self._graph: tuple | None = None  # (key, CUDAGraph, static input, static output)
        # per stage of the last inference call: None (untiled) or the tile edges (rows, cols) in output pixels
        self.last_tiling: dict[str, tuple[list[int], list[int]] | None] = {}
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
        self._norms = use_split_group_norm(self.unet) + use_split_group_norm(self.vae)  # off until asked
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
        self._graph = None  # a recorded graph reads the weights where they were; merging may move them
        self.vae.decoder.eval()
        if mode and getattr(self, "_merged", False):
            self.set_lora_merged(False)
        if mode and getattr(self, "_lora_scale_applied", 1.0) != 1.0:
            self._set_lora_scale(1.0)
        return self

    def _apply(self, fn, recurse: bool = True):
        self._graph = None  # .to()/.cuda() make new weight tensors; a recorded graph would read the old ones
        return super()._apply(fn, recurse)

    def _set_lora_scale(self, scale: float) -> None:
        """Scale the UNet adapter (unmerged while its scale changes)."""
        from peft.tuners.lora.layer import LoraLayer

        if scale == self._lora_scale_applied:
            return
        merged = self._merged
        self.set_lora_merged(False)
        for module in self.unet.modules():
            if isinstance(module, LoraLayer):
                module.set_scale("default", scale)
        self._lora_scale_applied = scale
        self.set_lora_merged(merged)

    def set_lora_merged(self, merged: bool) -> None:
        """Fold the LoRA updates into (or back out of) the base weights of every adapted layer."""
        from peft.tuners.tuners_utils import BaseTunerLayer

        if merged == self._merged:
            return
        self._graph = None
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

    # ---- tiled inference -------------------------------------------------------------------
    def _inference(self) -> bool:
        return not self.training and not torch.is_grad_enabled()

    def stage_memory(self, stage: str, shape: torch.Size, dtype: torch.dtype) -> float:
        """Estimated peak activation bytes of one untiled stage on an input of `shape`: the
        largest feature map (first-level channels at the stage's full resolution) times a
        measured stage factor (`STAGE_PEAK_FACTOR`, see benchmarks/RESULTS.md)."""
        b, _, h, w = shape
        if stage == "encode":
            elements = self.vae.config.block_out_channels[0] * h * w
        elif stage == "decode":
            elements = self.vae.config.block_out_channels[0] * h * w * self.vae_factor**2
        else:
            elements = self.unet.config.block_out_channels[0] * h * w
        return STAGE_PEAK_FACTOR[stage] * b * elements * torch.tensor([], dtype=dtype).element_size()

    def _budget(self, device: torch.device) -> float:
        if self.memory_budget_gb is not None:
            return self.memory_budget_gb * 2**30
        if device.type == "cuda":
            return CUDA_BUDGET_SHARE * torch.cuda.mem_get_info(device)[0]
        return 0.5 * _available_ram()

    def _should_tile(self, stage: str, x: torch.Tensor, factor: Fraction) -> bool:
        if not self._inference() or self.tiling == "never":
            return False
        latent_side = max(x.shape[-2:]) * (factor if stage == "encode" else 1)
        if latent_side <= self.tile_size:
            return False  # fits one tile: never tiled
        if self.tiling == "always":
            return True
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        return self.stage_memory(stage, x.shape, dtype) > self._budget(x.device)

    def _staged(self, stage: str, fn, x: torch.Tensor, network: nn.Module, factor: Fraction) -> torch.Tensor:
        """fn(x), or fn over tiles of x when `_should_tile` says so (tile sizes in x's pixels)."""
        from headsup.models.tiling import tile_edges, tile_grid, tiled_apply

        tile = self._should_tile(stage, x, factor)
        per_latent = self.vae_factor if stage == "encode" else 1
        if self._inference():
            edges = None
            if tile:
                h, w = x.shape[-2:]
                size, overlap = self.tile_size * per_latent, self.tile_overlap * per_latent
                ys, xs = tile_grid(h, w, size, overlap, per_latent)
                to_out = self.vae_factor // per_latent  # input pixels of this stage -> output pixels
                edges = ([e * to_out for e in tile_edges(ys, min(size, h), h)],
                         [e * to_out for e in tile_edges(xs, min(size, w), w)])
            self.last_tiling[stage] = edges
        if not tile:
            return fn(x)
        return tiled_apply(fn, x, self.tile_size * per_latent, self.tile_overlap * per_latent, self.tile_batch,
                           factor=factor, network=network, norm_passes=self.norm_passes, align=per_latent)

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
        split = self._inference() and self.split_group_norm and lq.is_cuda
        if self._norms and self._norms[0].split != split:
            for norm in self._norms:
                norm.split = split
        if self._inference():
            self.last_tiling = {}
            self._set_lora_scale(self.lora_scale)
            self.set_lora_merged(self.merge_lora)
            if self.channels_last:
                self.unet.to(memory_format=torch.channels_last)
                self.vae.to(memory_format=torch.channels_last)
                lq = lq.contiguous(memory_format=torch.channels_last)
            if self.compile and not self._compiled:
                for module in self.compiled_modules():
                    module.compile()
                self._compiled = True
        z = self.encode(lq)
        extra = self.conditioning(z, reference, landmarks, face_mask, has_reference) if self.reference else None
        c = z.shape[1]
        joined = z if extra is None else torch.cat([z, extra.to(z.dtype)], dim=1)
        z0 = self._staged("unet", lambda t: self.denoise(t[:, :c], t[:, c:] if extra is not None else None, embeds),
                          joined, self.unet, Fraction(1))
        image = self.decode(z0)[..., :out_h, :out_w]
        return SROutput(image=image, latent=z0)

    def compiled_modules(self) -> tuple[nn.Module, ...]:
        """What `compile` compiles: the UNet and the VAE's encoder and decoder. Not the VAE itself:
        `vae.compile()` compiles only `AutoencoderKL.forward`, which `encode`/`decode` never call."""
        return self.unet, self.vae.encoder, self.vae.decoder

    def forward(self, lq: torch.Tensor, **conditioning) -> torch.Tensor:
        """LQ (B, 3, h, w) in [0, 1] -> SR (B, 3, h*scale, w*scale) in [0, 1]."""
        if self.cuda_graphs and lq.is_cuda and self._inference() and all(v is None for v in conditioning.values()):
            return self._graphed(lq)
        self._graph = None
        return self.generate(lq, **conditioning).image

    def _graph_key(self, lq: torch.Tensor) -> tuple:
        amp = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        settings = tuple(getattr(self, option) for option in INFERENCE_OPTIONS)
        return (tuple(lq.shape), lq.dtype, lq.device, amp, settings)

    def _graphed(self, lq: torch.Tensor) -> torch.Tensor:
        """`generate(lq).image` through a recorded CUDA graph (see `cuda_graphs`)."""
        key = self._graph_key(lq)
        if self._graph is not None and self._graph[0] == key:
            _, graph, static_in, static_out = self._graph
            static_in.copy_(lq)
            graph.replay()
            return static_out.clone()
        self._graph = None  # free the previous graph's memory before recording another
        out = self.generate(lq).image  # eager: settles merging, LoRA scale, compilation and tiling
        if any(edges is not None for edges in self.last_tiling.values()):
            return out  # tiled stages sync with the host between tiles: not recordable
        amp = key[3]
        static_in = lq.clone()
        tiling, self.tiling = self.tiling, "never"  # known not to tile; skips the memory query
        try:
            side = torch.cuda.Stream(device=lq.device)
            side.wait_stream(torch.cuda.current_stream(lq.device))
            with torch.cuda.stream(side):
                self.generate(static_in)  # warm-up off the default stream, as recording requires
            torch.cuda.current_stream(lq.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.autocast("cuda", dtype=amp or torch.float32, enabled=amp is not None, cache_enabled=False):
                with torch.cuda.graph(graph):
                    static_out = self.generate(static_in).image
        finally:
            self.tiling = tiling
        self._graph = (key, graph, static_in, static_out)
        return out


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
