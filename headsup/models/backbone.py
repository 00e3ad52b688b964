"""Where the generator's Stable Diffusion parts come from.

A `BackboneSource` builds a `Backbone`: the VAE, the UNet, the noise schedule
(alphas_cumprod and prediction type) and a fixed prompt embedding. Real runs load
a local diffusers folder (SD 2.1-base or SD-Turbo layout) with
`from_pretrained(path, local_files_only=True)`; tests and the quickstart build
models from config dicts. Nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

# Noise schedule of SD 1.x/2.x (DDPM, 1000 steps, "scaled_linear" betas).
SD_SCHEDULER = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
}

# Architecture of stabilityai/stable-diffusion-2-1-base (865.9M UNet, 83.7M VAE parameters).
SD21_BASE_UNET = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20],
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "norm_num_groups": 32,
}
SD21_BASE_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}


# The scheduler keys that define the noise schedule (a folder's PNDM/DDIM sampling settings do not matter).
SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type")


def architecture(unet: dict, vae: dict, scheduler: dict) -> dict:
    """What a generator's trained weights depend on in its backbone: the UNet and VAE configs (private
    `_` keys such as `_name_or_path` left out) and the noise schedule. Not the weights themselves."""
    public = {part: {k: v for k, v in config.items() if not k.startswith("_")} for part, config in
              (("unet", unet), ("vae", vae))}
    full = DDPMScheduler.from_config({k: v for k, v in scheduler.items() if not k.startswith("_")}).config
    return {**public, "scheduler": {k: full[k] for k in SCHEDULE_KEYS}}  # unset keys at diffusers' defaults


def fingerprint(arch: dict) -> str:
    """A short hash of `architecture(...)` (JSON with sorted keys)."""
    return hashlib.sha256(json.dumps(arch, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Backbone:
    """The pretrained parts a one-step generator is built from.

    Attributes:
        vae: The autoencoder (its decoder stays frozen).
        unet: The denoising UNet.
        alphas_cumprod: (T,) cumulative products of the noise schedule's alphas.
        prediction_type: "epsilon", "v_prediction" or "sample".
        prompt_embeds: (1, L, D) embedding of the fixed (empty) prompt.
    """

    vae: AutoencoderKL | None
    unet: UNet2DConditionModel
    alphas_cumprod: torch.Tensor
    prediction_type: str
    prompt_embeds: torch.Tensor


class BackboneSource:
    """Builds a `Backbone`; subclasses say from where."""

    def build(self, include_vae: bool = True) -> Backbone:
        """The parts; without `include_vae` the VAE is not loaded (`vae` is None)."""
        raise NotImplementedError

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """(N, L, D) text embeddings of `prompts`, computed once (e.g. CFG's prompt pair)."""
        raise NotImplementedError

    def embed_batch_prompts(self, prompts: list[str | None] | None, default: str) -> torch.Tensor | None:
        """(B, L, D) embeddings of a batch's per-sample prompts, `default` standing in for None
        entries; None when the batch has no prompt of its own."""
        if prompts is None or all(p is None for p in prompts):
            return None
        return self.embed_prompts([default if p is None else p for p in prompts])

    def release(self) -> None:
        """Drop whatever was kept only to serve later builds (e.g. a loaded text encoder)."""

    def architecture(self) -> dict:
        """The backbone's `architecture(...)`, read from configs without loading weights."""
        raise NotImplementedError


def _schedule(config: dict) -> tuple[torch.Tensor, str]:
    known = {k: v for k, v in config.items() if not k.startswith("_")}
    scheduler = DDPMScheduler.from_config(known)
    return scheduler.alphas_cumprod.clone().float(), scheduler.config.prediction_type


class DiffusersFolder(BackboneSource):
    """Load UNet, VAE, scheduler and (if present) text encoder from a local diffusers folder.

    The text encoder, when the folder has one, embeds the fixed prompts (the generator's, the
    teacher's CFG pair) at build time: it is loaded once, on first use, and kept until
    `release()` (which `SRSystem` calls once every part is built), and each prompt is embedded
    once. Per-image prompts (`headsup.data.prompts`) load it again on the first batch that has
    them; each unique text is embedded once and cached (CPU), so the text encoder runs only for
    texts not seen before. Without `text_encoder/` + `tokenizer/` every
    prompt embeds as zeros, with a warning: prompts then have no effect.

    Args:
        path: Folder with `unet/`, `vae/`, `scheduler/` and optionally `text_encoder/` + `tokenizer/`.
        prompt: The fixed prompt to embed (empty, as in OSEDiff without a tagger).
        max_cached_prompts: Embeddings kept, per unique prompt (77 x 1024 floats each for SD 2.1);
            the least recently used beyond it are dropped and embedded again if they come back.
    """

    def __init__(self, path: str, prompt: str = "", max_cached_prompts: int = 4096) -> None:
        self.path = path
        self.prompt = prompt
        self._text: tuple | None = None  # (tokenizer, encoder) between the first embedding and release()
        self._embeds: OrderedDict[str, torch.Tensor] = OrderedDict()  # per unique prompt, least recent first
        self.max_cached = max_cached_prompts
        self.encoded = 0  # prompts run through the text encoder so far

    def build(self, include_vae: bool = True) -> Backbone:
        root = self._root()
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", local_files_only=True)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", local_files_only=True) if include_vae else None
        scheduler_file = root / "scheduler" / "scheduler_config.json"
        config = json.loads(scheduler_file.read_text()) if scheduler_file.is_file() else SD_SCHEDULER
        alphas_cumprod, prediction_type = _schedule(config)
        prompt_embeds = self.embed_prompts([self.prompt], unet.config.cross_attention_dim)
        return Backbone(vae, unet, alphas_cumprod, prediction_type, prompt_embeds)

    def _root(self) -> Path:
        root = Path(self.path).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(
                f"diffusers folder not found: {root} (backbone path; point it at a local "
                "SD 2.1-base or SD-Turbo folder with unet/ and vae/ subfolders)"
            )
        for sub in ("unet", "vae"):
            if not (root / sub).is_dir():
                raise FileNotFoundError(f"diffusers folder {root} has no '{sub}/' subfolder")
        return root

    def architecture(self) -> dict:
        root = self._root()
        configs = {}
        for part, file in (("unet", "unet/config.json"), ("vae", "vae/config.json"),
                           ("scheduler", "scheduler/scheduler_config.json")):
            path = root / file
            if part == "scheduler" and not path.is_file():
                configs[part] = SD_SCHEDULER
                continue
            try:
                configs[part] = json.loads(path.read_text())
            except (OSError, ValueError) as err:
                raise ValueError(f"{path}: unreadable diffusers config ({err})") from err
        return architecture(**configs)

    @property
    def has_text_encoder(self) -> bool:
        root = self._root()
        return (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir()

    @torch.no_grad()
    def embed_prompts(self, prompts: list[str], dim: int | None = None) -> torch.Tensor:
        """CLIP text embeddings from the folder's text encoder (each prompt embedded once);
        zeros (77 tokens) when the folder has no text encoder."""
        root = self._root()
        if not self.has_text_encoder:
            if getattr(self, "_warned", False):
                return torch.zeros(len(prompts), 77, dim or json.loads((root / "unet" / "config.json").read_text())[
                    "cross_attention_dim"])
            self._warned = True
            warnings.warn(
                f"diffusers folder {root} has no text_encoder/ + tokenizer/: prompts {list(prompts)!r} "
                "embed as zeros, so prompts (and a teacher's classifier-free guidance) have no effect. "
                "Use the full SD 2.1-base folder as the hub lays it out.", UserWarning, stacklevel=2)
            if dim is None:
                dim = json.loads((root / "unet" / "config.json").read_text())["cross_attention_dim"]
            return torch.zeros(len(prompts), 77, dim)
        missing = [p for p in dict.fromkeys(prompts) if p not in self._embeds]
        if missing:
            if self._text is None:
                from transformers import CLIPTextModel, CLIPTokenizer

                self._text = (CLIPTokenizer.from_pretrained(root, subfolder="tokenizer", local_files_only=True),
                              CLIPTextModel.from_pretrained(root, subfolder="text_encoder", local_files_only=True))
            tokenizer, encoder = self._text
            ids = tokenizer(
                missing, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                return_tensors="pt",
            ).input_ids
            self._embeds.update(zip(missing, encoder(ids)[0].float()))
        out = torch.stack([self._embeds[p] for p in prompts])
        for p in dict.fromkeys(prompts):
            self._embeds.move_to_end(p)
        while len(self._embeds) > self.max_cached:  # least recently used first
            self._embeds.popitem(last=False)
        self.encoded += len(missing)
        return out

    def release(self) -> None:
        self._text = None
        self._warned = False  # each build warns again; per-image prompts after it warn once


class FromConfig(BackboneSource):
    """Randomly initialised UNet and VAE built from diffusers config dicts.

    Args:
        unet: `UNet2DConditionModel` constructor arguments.
        vae: `AutoencoderKL` constructor arguments.
        scheduler: `DDPMScheduler` config (defaults to SD's schedule).
        prompt_length: Token count of the (zero) prompt embedding.
        seed: Seed of the random initialisation.
    """

    def __init__(
        self,
        unet: dict | None = None,
        vae: dict | None = None,
        scheduler: dict | None = None,
        prompt_length: int = 77,
        seed: int = 0,
    ) -> None:
        self.unet = dict(unet or SD21_BASE_UNET)
        self.vae = dict(vae or SD21_BASE_VAE)
        self.scheduler = dict(scheduler or SD_SCHEDULER)
        self.prompt_length = prompt_length
        self.seed = seed

    def build(self, include_vae: bool = True) -> Backbone:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            unet = UNet2DConditionModel(**self.unet)
            vae = AutoencoderKL(**self.vae) if include_vae else None
        alphas_cumprod, prediction_type = _schedule(self.scheduler)
        prompt = torch.zeros(1, self.prompt_length, unet.config.cross_attention_dim)
        return Backbone(vae, unet, alphas_cumprod, prediction_type, prompt)

    def architecture(self) -> dict:
        return architecture(self.unet, self.vae, self.scheduler)

    def embed_prompts(self, prompts: list[str]) -> torch.Tensor:
        """Stand-in embeddings without a text encoder: zeros for the empty prompt, otherwise
        unit Gaussian noise seeded by the prompt's text (different prompts differ, repeatably)."""
        dim = self.unet["cross_attention_dim"]
        out = torch.zeros(len(prompts), self.prompt_length, dim)
        for i, text in enumerate(prompts):
            if text:
                seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
                out[i] = torch.randn(self.prompt_length, dim, generator=torch.Generator().manual_seed(seed))
        return out
