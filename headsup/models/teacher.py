"""The frozen teacher (real score) and the LoRA fake score of VSD, sharing one UNet.

VSD needs two diffusion models on the generator's latents: the pretrained UNet, frozen, as
the score of real images (with classifier-free guidance), and a copy fine-tuned on the
generator's outputs as the score of generated images. Here they are one UNet: its base
weights are frozen and shared; the fake score is a peft LoRA adapter ("fake_score") on it,
and the teacher is the same UNet with adapters disabled. That holds one full UNet instead
of two (OSEDiff keeps two copies).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from headsup.models.backbone import BackboneSource
from headsup.models.lora import LoRASpec, add_lora

ADAPTER = "fake_score"

# The negative prompt of OSEDiff's released training script (scripts/train/train_osediff.sh, `--neg_prompt`).
OSEDIFF_NEGATIVE_PROMPT = (
    "painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, unreal engine, "
    "blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg artifacts, deformed, "
    "lowres, over-smooth"
)


def to_epsilon(pred: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """The UNet output as the noise estimate eps, for epsilon / v / sample prediction."""
    a = alpha_bar.view(-1, 1, 1, 1)
    if prediction_type == "epsilon":
        return pred
    if prediction_type == "v_prediction":
        return a.sqrt() * pred + (1 - a).sqrt() * z_t
    return (z_t - a.sqrt() * pred) / (1 - a).sqrt()


def to_x0(eps: torch.Tensor, z_t: torch.Tensor, alpha_bar: torch.Tensor) -> torch.Tensor:
    """Clean-latent estimate from the noise estimate: (z_t - sqrt(1 - abar) eps) / sqrt(abar)."""
    a = alpha_bar.view(-1, 1, 1, 1)
    return (z_t - (1 - a).sqrt() * eps) / a.sqrt()


class TeacherWithFakeScore(nn.Module):
    """One frozen UNet serving as the CFG teacher (adapters off) and the fake score (LoRA on).

    Args:
        backbone: Source of the pretrained UNet and noise schedule; None: the generator's, given
            when the objective is bound to it (`build`), so one path configures both.
        fake_lora: LoRA of the fake score (default: OSEDiff's rank 4, alpha 8, `osediff_unet` targets
            under the prefix "mid_block.": the only adapter OSEDiff's fake score runs and trains, since
            diffusers' `add_adapter` activates the last adapter added and its three are never set
            active together; prefix "" adapts the whole UNet).
        guidance_scale: Classifier-free guidance scale of the teacher (OSEDiff: 7.5). Above 1 the two
            prompts must embed differently (a backbone without a text encoder embeds both as zeros):
            such a teacher is warned about when built and refused when training calls it, since its
            guidance would do nothing (evaluating a checkpoint never calls it).
        prompt: Positive prompt (of the teacher's conditional branch and of the fake score) of images
            without their own: a batch's per-image prompts (OSEDiff: the image's RAM tags) take its place.
        negative_prompt: Prompt of the teacher's unconditional branch (default: OSEDiff's training
            script's negative prompt).
    """

    def __init__(
        self,
        backbone: BackboneSource | None = None,
        fake_lora: LoRASpec | None = None,
        guidance_scale: float = 7.5,
        prompt: str = "",
        negative_prompt: str = OSEDIFF_NEGATIVE_PROMPT,
    ) -> None:
        super().__init__()
        self.fake_lora = fake_lora or LoRASpec(prefix="mid_block.")
        self.guidance_scale = guidance_scale
        self.prompts = (prompt, negative_prompt)
        self.unet = None
        self.inert_guidance = False
        if backbone is not None:
            self.build(backbone)
            backbone.release()  # its own source: nothing else embeds prompts with it

    @property
    def built(self) -> bool:
        return self.unet is not None

    def build(self, backbone: BackboneSource) -> None:
        """Load the UNet, schedule and prompt embeddings from `backbone` and add the fake-score LoRA."""
        parts = backbone.build(include_vae=False)
        self.source = backbone  # embeds per-image prompts later (each text once)
        self.unet = parts.unet.requires_grad_(False)
        self.prediction_type = parts.prediction_type
        self.register_buffer("alphas_cumprod", parts.alphas_cumprod.clone(), persistent=False)
        embeds = backbone.embed_prompts(list(self.prompts))
        self.inert_guidance = self.guidance_scale > 1 and torch.equal(embeds[0], embeds[1])
        if self.inert_guidance:  # refused when training uses it (real_eps); evaluation never calls the teacher
            warnings.warn(self._inert_message(), UserWarning, stacklevel=2)
        self.register_buffer("prompt_embeds", embeds[:1].clone(), persistent=False)
        self.register_buffer("negative_embeds", embeds[1:].clone(), persistent=False)
        add_lora(self.unet, self.fake_lora, ADAPTER, default="osediff_unet")
        self.unet.set_adapter(ADAPTER)
        self.train(self.training)

    def _inert_message(self) -> str:
        return (f"the VSD teacher's prompt {self.prompts[0]!r} and negative_prompt {self.prompts[1]!r} embed "
                f"identically, so guidance_scale {self.guidance_scale} would change nothing: give a backbone folder "
                "with text_encoder/ + tokenizer/ and two different prompts "
                "(model.objectives.<name>.init_args.scores.init_args.prompt / negative_prompt), or set "
                "...scores.init_args.guidance_scale to 1")

    def train(self, mode: bool = True) -> TeacherWithFakeScore:
        super().train(mode)
        if self.unet is not None:
            self.unet.eval()  # no dropout in either score
        return self

    def fake_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.unet.named_parameters() if f".{ADAPTER}." in n]

    def positive_embeds(self, prompts: list[str | None] | None) -> torch.Tensor:
        """(B, L, D) embeddings of a batch's per-image prompts (None entries: `prompt`), or the fixed
        prompt's (1, L, D) when the batch has none."""
        embeds = self.source.embed_batch_prompts(prompts, self.prompts[0])
        return self.prompt_embeds if embeds is None else embeds.to(self.prompt_embeds.device)

    def _call(self, z_t: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        cond = embeds.to(z_t.dtype).expand(z_t.shape[0], -1, -1) if embeds.shape[0] == 1 else embeds.to(z_t.dtype)
        return self.unet(z_t, t, encoder_hidden_states=cond).sample

    def real_eps(self, z_t: torch.Tensor, t: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher noise estimate with classifier-free guidance (one batched call for both branches);
        `positive`: per-sample prompt embeddings (`positive_embeds`), else the fixed prompt."""
        if self.inert_guidance:
            raise ValueError(self._inert_message())
        b = z_t.shape[0]
        positive = self.prompt_embeds if positive is None else positive
        embeds = torch.cat([positive.expand(b, -1, -1), self.negative_embeds.expand(b, -1, -1)])
        self.unet.disable_adapters()
        try:
            pred = self._call(torch.cat([z_t, z_t]), torch.cat([t, t]), embeds)
        finally:
            self.unet.enable_adapters()
        a = self.alphas_cumprod[t]
        eps_pos, eps_neg = to_epsilon(pred, torch.cat([z_t, z_t]), torch.cat([a, a]), self.prediction_type).chunk(2)
        return eps_neg + self.guidance_scale * (eps_pos - eps_neg)

    def fake_output(self, z_t: torch.Tensor, t: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
        """The fake score's raw UNet output (its training target follows the prediction type),
        conditioned on the positive prompt (per sample where given)."""
        return self._call(z_t, t, self.prompt_embeds if positive is None else positive)

    def fake_eps(self, z_t: torch.Tensor, t: torch.Tensor, positive: torch.Tensor | None = None) -> torch.Tensor:
        return to_epsilon(self.fake_output(z_t, t, positive), z_t, self.alphas_cumprod[t], self.prediction_type)
