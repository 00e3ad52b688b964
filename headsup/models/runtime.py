"""Run-time machinery of the one-step generator at inference (`InferenceRuntime`, a mixin of `OneStepSR`).

What shapes how the generator runs, not what it computes: tiling of each stage (VAE encoder, UNet, VAE
decoder) against a memory budget, LoRA merging and strength, channels-last, `torch.compile`, a recorded
CUDA graph per input shape, and GroupNorm statistics by a split reduction. Every path that runs the
generator at inference (validation, `headsup test`, `SRPipeline`, predict) gets the same behaviour,
which is why it stays on the module (models layer) rather than in one caller. Training never tiles,
merges or records. Attributes are the `OneStepSR` constructor's options of the same names.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from fractions import Fraction

import torch
from torch import nn

from headsup.models.norm import use_split_group_norm
from headsup.models.tiling import tile_edges, tile_grid, tiled_apply

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


class InferenceRuntime:
    """Mixin of `OneStepSR` (an `nn.Module` with `unet`, `vae`, `vae_factor` and `generate`): the run-time
    options, set from `OneStepSR`'s constructor arguments of the same names.

    Options:
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

    def _init_runtime(self, tiling: str, tile_size: int, tile_overlap: int, tile_batch: int, norm_passes: int,
                      memory_budget_gb: float | None, merge_lora: bool, lora_scale: float, reference_strength: float,
                      channels_last: bool, compile: bool, cuda_graphs: bool, split_group_norm: bool) -> None:
        self.tiling, self.tile_size, self.tile_overlap, self.tile_batch = tiling, tile_size, tile_overlap, tile_batch
        self.norm_passes, self.memory_budget_gb = norm_passes, memory_budget_gb
        self.merge_lora, self.lora_scale, self.reference_strength = merge_lora, lora_scale, reference_strength
        self.channels_last, self.compile, self.cuda_graphs = channels_last, compile, cuda_graphs
        self.split_group_norm = split_group_norm
        self._merged, self._lora_scale_applied, self._compiled = False, 1.0, False
        self._graph: tuple | None = None  # (key, CUDAGraph, static input, static output)
        # per stage of the last inference call: None (untiled) or the tile edges (rows, cols) in output pixels
        self.last_tiling: dict[str, tuple[list[int], list[int]] | None] = {}
        self._norms = use_split_group_norm(self.unet) + use_split_group_norm(self.vae)  # off until asked
        self.check_runtime()

    def check_runtime(self) -> None:
        """Refuse run-time options that cannot work (after setting them as attributes)."""
        if self.tiling not in ("auto", "always", "never"):
            raise ValueError(f"tiling must be 'auto', 'always' or 'never', got '{self.tiling}'")
        if not 0 <= self.tile_overlap < self.tile_size:
            raise ValueError(f"tile_overlap must be within [0, tile_size), got {self.tile_overlap} for {self.tile_size}")
        if getattr(self, "upsample", "bicubic") not in ("bicubic", "pil_bicubic"):
            raise ValueError(f"upsample must be 'bicubic' or 'pil_bicubic', got '{self.upsample}'")
        if self.tile_batch < 1 or self.norm_passes < 0:
            raise ValueError(f"tile_batch must be at least 1 and norm_passes at least 0, got {self.tile_batch} and "
                             f"{self.norm_passes}")

    @contextmanager
    def as_trained(self):
        """The weights as trained for the duration: LoRA unmerged and at strength 1 (what exports and
        checkpoints must hold; a merged base weight would carry the update twice once loaded). Restored
        afterwards."""
        merged, scale = self._merged, self._lora_scale_applied
        self._set_lora_scale(1.0)
        self.set_lora_merged(False)
        try:
            yield self
        finally:
            self._set_lora_scale(scale)
            self.set_lora_merged(merged)

    def train(self, mode: bool = True):
        super().train(mode)
        self._graph = None  # a recorded graph reads the weights where they were; merging may move them
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

    def _prepare_inference(self, lq: torch.Tensor) -> torch.Tensor:
        """Bring the modules into the state the run-time options ask for before an inference call
        (split GroupNorm on CUDA, LoRA strength and merging, channels-last, compilation); returns `lq`
        in the memory format the call uses. In training only GroupNorm is reset."""
        split = self._inference() and self.split_group_norm and lq.is_cuda
        if self._norms and self._norms[0].split != split:
            for norm in self._norms:
                norm.split = split
        if not self._inference():
            return lq
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
        return lq

    def compiled_modules(self) -> tuple[nn.Module, ...]:
        """What `compile` compiles: the UNet and the VAE's encoder and decoder. Not the VAE itself:
        `vae.compile()` compiles only `AutoencoderKL.forward`, which `encode`/`decode` never call."""
        return self.unet, self.vae.encoder, self.vae.decoder

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
