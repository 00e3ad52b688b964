"""SRPipeline: a trained generator for inference, built from an export folder or a `headsup fit` checkpoint.

Like diffusers' pipelines, it holds only what inference needs: the generator (UNet, VAE, the prompt's
text embedding, LoRA, conv_in) on its backbone, and the run-time options. It never builds the
training-only networks (teacher, LPIPS, facenet, discriminator), so a trained model runs with the
backbone folder alone:

    pipe = SRPipeline.from_pretrained("exports/portrait", backbone="weights/sd21-base")
    sr = pipe(lq)                                  # (B, 3, h, w) in [0, 1] -> (B, 3, 4h, 4w), colour-fixed

`headsup predict`, `headsup-tools enhance` and the blending baseline's `CheckpointModel` run through
it: `predict_batch` is the predict step (faces and the aligned reference for face-aware models, the
fp32 retry of a non-finite reduced-precision output, notes on what could not be used).
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from headsup.inference.colorfix import color_fix as apply_color_fix
from headsup.inference.export import CONFIG, FOLDER_ARGS, check_backbone, load_export
from headsup.models.checkpoint import checkpoint_weights, read_checkpoint, run_checkpoint
from headsup.models.generator import OneStepSR
from headsup.models.runtime import INFERENCE_OPTIONS

PRECISIONS = {"32": None, "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def generator_from_checkpoint(path: str | os.PathLike, backbone: str | os.PathLike | None = None,
                              raw: bool = False) -> tuple[OneStepSR, dict]:
    """The generator of a `headsup fit` checkpoint (built from its `hyper_parameters`, on `backbone` when
    given), with its EMA weights unless `raw`; and the checkpoint's dict.

    Raises:
        FileNotFoundError: no such checkpoint, or its backbone is missing.
        ValueError: an unsafe or unreadable file, no generator config, a backbone of another architecture
            (where the checkpoint records one), trained tensors that do not fit.
    """
    from jsonargparse import ArgumentParser

    checkpoint = read_checkpoint(path)
    config = (checkpoint.get("hyper_parameters") or {}).get("generator")
    if not isinstance(config, dict) or "class_path" not in config:
        raise ValueError(f"{path} has no generator config in its hyper_parameters (a checkpoint of `headsup fit` "
                         f"under the CLI, or of `headsup-tools import-osediff`, has one)")
    if config["class_path"] != "headsup.models.generator.OneStepSR":
        raise ValueError(f"{path}: its generator is {config['class_path']}; SRPipeline loads OneStepSR generators")
    config = {**config, "init_args": dict(config.get("init_args") or {})}
    if backbone is not None:
        args = (config["init_args"].get("backbone") or {}).get("init_args") or {}
        config["init_args"]["backbone"] = {"class_path": "headsup.models.backbone.DiffusersFolder",
                                           "init_args": {"path": str(backbone),
                                                         **{k: args[k] for k in FOLDER_ARGS if k in args}}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--generator", type=OneStepSR)
    try:
        generator = parser.instantiate_classes(parser.parse_object({"generator": config})).generator
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # noqa: BLE001 - jsonargparse's errors name the key; say which file it came from
        raise ValueError(f"{path}: its generator config does not build: {err}") from err
    if "backbone" in checkpoint:
        check_backbone(generator.backbone_source, checkpoint["backbone"], f"the checkpoint {path}")
    state = checkpoint_weights(checkpoint, raw)
    own = dict(generator.named_parameters())
    trained = {n for n, p in own.items() if p.requires_grad}
    missing, unexpected = sorted(trained - set(state)), sorted(set(state) - set(own))
    wrong = sorted(k for k in set(state) & set(own) if state[k].shape != own[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(f"{path} does not fit its generator config: {len(missing)} trained tensors missing "
                         f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(wrong)} of another "
                         f"shape {wrong[:3]}")
    generator.load_state_dict(state, strict=False)
    return generator, checkpoint


def batch_conditioning(generator: nn.Module, batch: dict) -> dict:
    """A batch's conditioning inputs for `generator`: its per-image prompts; for a `reference=True`
    generator the face mask and the reference of face slot 0 (the largest face, whose identity it shows);
    the batch's faces for a model that uses them (the blending baseline)."""
    if getattr(generator, "uses_faces", False):
        if "face_landmarks" not in batch:
            return {}
        return {"face_landmarks": batch["face_landmarks"], "face_valid": batch["face_valid"]}
    cond = {"prompts": batch["prompt"]} if "prompt" in batch else {}
    if not getattr(generator, "reference", False):
        return cond
    if "face_mask" in batch:
        cond["face_mask"] = batch["face_mask"]
    if "reference" in batch and "face_landmarks" in batch:
        cond.update(reference=batch["reference"], landmarks=batch["face_landmarks"][:, 0],
                    has_reference=batch["has_reference"] & batch["face_valid"][:, 0])
    return cond


class SRPipeline:
    """A generator and the options it runs with at inference.

    Args:
        generator: The SR model (a `OneStepSR`, or any model with a `scale`, e.g. the blending baseline).
        color_fix: Colour correction of `__call__`'s output towards the input: "adain", "wavelet" or "none".
        precision: `__call__`'s compute precision: "32" (fp32), "bf16-mixed" or "16-mixed" (autocast; an
            output that is not finite is computed again in fp32). Lightning's `Trainer` sets it for
            `predict_batch`.
        reference_size: Side of the aligned reference face for face-aware models (as in training).
        max_faces: Face slots filled from detection for face-aware models.
        options: Run-time options of the generator (`INFERENCE_OPTIONS`: tiling, tile_size, merge_lora,
            lora_scale, reference_strength, compile, cuda_graphs, ...); None keeps the generator's.
    """

    def __init__(self, generator: nn.Module, color_fix: str = "adain", precision: str = "32",
                 reference_size: int = 512, max_faces: int = 4, **options) -> None:
        if color_fix not in ("adain", "wavelet", "none"):
            raise ValueError(f"color_fix must be adain, wavelet or none, got '{color_fix}'")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
        self.precision = precision
        self.generator = generator
        self.color_fix = color_fix
        self.reference_size, self.max_faces = reference_size, max_faces
        self._faces = None
        self.set_options(**options)

    @classmethod
    def from_pretrained(cls, weights: str | os.PathLike, backbone: str | os.PathLike | None = None,
                        raw: bool = False, **kwargs) -> SRPipeline:
        """Build from an export folder (`headsup-tools export`), a `.ckpt` of `headsup fit` or its run folder.

        Args:
            weights: The export folder, checkpoint file, or run folder (its checkpoints/last.ckpt).
            backbone: A local diffusers folder to run on instead of the recorded one (its architecture
                must match the recorded fingerprint).
            raw: From a checkpoint: its live weights instead of the EMA average.
            kwargs: `SRPipeline` arguments (colour fix, run-time options). An export's colour fix
                defaults to its run's evaluation colour fix.
        """
        weights = Path(weights)
        if weights.is_dir() and not (weights / CONFIG).exists() and run_checkpoint(weights):
            weights = run_checkpoint(weights)  # a run folder of `headsup fit`
        if weights.is_dir():
            generator, config = load_export(weights, backbone)
            if raw and config.get("weights") != "raw":
                raise ValueError(f"{weights} holds the run's {config.get('weights')} weights, not the raw ones: "
                                 f"export them with `headsup-tools export --raw`")
            fix, faces = config.get("eval_color_fix"), config.get("faces") or {}
        elif weights.is_file():
            generator, checkpoint = generator_from_checkpoint(weights, backbone, raw)
            fix, faces = (checkpoint.get("hyper_parameters") or {}).get("eval_color_fix"), checkpoint.get("faces") or {}
        else:
            raise FileNotFoundError(f"weights not found: {weights} (an export folder with {CONFIG}, a .ckpt, or a "
                                    f"run folder with checkpoints/last.ckpt)")
        if fix is not None:
            kwargs.setdefault("color_fix", fix)
        for key in ("reference_size", "max_faces"):  # as the run's data module sized them
            if faces.get(key) is not None:
                kwargs.setdefault(key, faces[key])
        generator.requires_grad_(False)
        return cls(generator.eval(), **kwargs)

    def set_options(self, **options) -> None:
        """Set run-time options of the generator (None: unchanged)."""
        unknown = sorted(set(options) - set(INFERENCE_OPTIONS))
        if unknown:
            raise ValueError(f"unknown run-time option '{unknown[0]}' (known: {', '.join(INFERENCE_OPTIONS)})")
        given = {k: v for k, v in options.items() if v is not None}
        before = {k: getattr(self.generator, k) for k in given}
        for key, value in given.items():
            setattr(self.generator, key, value)
        try:
            if hasattr(self.generator, "check_runtime"):
                self.generator.check_runtime()
        except ValueError:
            for key, value in before.items():
                setattr(self.generator, key, value)
            raise

    @property
    def scale(self) -> int:
        return int(self.generator.scale)

    def to(self, device: str | torch.device) -> SRPipeline:
        self.generator.to(device)
        return self

    # ------------------------------------------------------------------ Python use
    @torch.no_grad()
    def __call__(self, lq: torch.Tensor, reference: torch.Tensor | None = None,
                 prompt: str | list[str | None] | None = None) -> torch.Tensor:
        """LQ (B, 3, h, w) in [0, 1] -> SR (B, 3, h * scale, w * scale), colour-fixed.

        reference: (1, 3, H, W) photo of the person (a face-aware model finds the faces of a one-image
        batch itself); prompt: one text for all images or one per image (None: the model's fixed prompt).
        """
        batch: dict = {"lq": lq}
        if prompt is not None:
            batch["prompt"] = [prompt] * len(lq) if isinstance(prompt, str) else list(prompt)
        if self.face_aware and len(lq) > 1:  # faces are found per image
            return torch.cat([self(lq[i : i + 1], reference, None if prompt is None else batch["prompt"][i : i + 1])
                              for i in range(len(lq))])
        dtype = PRECISIONS[self.precision]
        with torch.autocast(lq.device.type, dtype=dtype, enabled=dtype is not None):
            sr, _, _ = self.generate(batch, reference)
        return apply_color_fix(sr, lq.to(sr), self.color_fix)

    # ------------------------------------------------------------------ predict
    def _face_inputs(self, lq, reference, name: str) -> tuple[dict, list[str]]:
        from headsup.inference.faces import PredictFaces

        if self._faces is None:
            self._faces = PredictFaces(reference_size=self.reference_size, max_faces=self.max_faces)
        ref = reference if reference is not None and reference.numel() else None
        return self._faces(lq, self.scale, ref, name)

    @property
    def face_aware(self) -> bool:
        """Whether the model takes faces (a reference-conditioned generator, the blending baseline)."""
        return bool(getattr(self.generator, "reference", False) or getattr(self.generator, "uses_faces", False))

    def generate(self, batch: dict, reference: torch.Tensor | None = None,
                 reference_name: str = "") -> tuple[torch.Tensor, list[str], bool]:
        """The generator's output for a batch (no colour fix), notes on what could not be used, and whether
        a reference was used. A face-aware model gets detected faces (one-image batches) and the aligned
        reference; an output that is not finite under reduced precision is computed again in fp32."""
        lq = batch["lq"]
        notes: list[str] = []
        if self.face_aware:
            if len(lq) != 1:
                raise ValueError("face detection for a face-aware model runs on one image at a time")
            fields, notes = self._face_inputs(lq, reference, reference_name)
            batch = {**batch, **fields}
        elif reference is not None and reference.numel():
            notes.append(f"this model takes no reference: {reference_name or 'the reference'} not used")
        cond = batch_conditioning(self.generator, batch)
        sr = self.generator(lq, **cond).float()
        if not torch.isfinite(sr).all():  # half precision overflowing (black or NaN output on some GPUs)
            with torch.autocast(lq.device.type, enabled=False):
                sr = self.generator(lq.float(), **cond).float()
            notes.append("non-finite output in reduced precision: computed again in fp32")
        return sr, notes, cond.get("has_reference") is not None and bool(cond["has_reference"].any())

    def predict_batch(self, batch: dict) -> dict:
        """One predict item (a one-image batch of `SRDataModule`'s predict set) -> what `PredictWriter`
        saves: the SR (not colour-fixed: the writer does that), alpha, paths, notes, tile edges."""
        if batch.get("error") and batch["error"][0]:
            return {"error": batch["error"][0], "path": batch["path"][0]}
        notes = [f"reference unreadable, not used: {batch['reference_error'][0]}"] if batch.get("reference_error",
                                                                                                 [""])[0] else []
        ref_path = batch.get("reference_path", [""])[0]
        sr, more, referenced = self.generate(batch, batch.get("reference_image"), ref_path)
        alpha = batch["alpha"]
        if alpha.numel():
            alpha = F.interpolate(alpha.float(), scale_factor=self.scale, mode="bicubic",
                                  align_corners=False).clamp(0, 1)
        edges = [v for v in getattr(self.generator, "last_tiling", {}).values() if v]
        return {"sr": sr, "alpha": alpha if alpha.numel() else None, "path": batch["path"][0],
                "relpath": batch["relpath"][0], "grayscale": batch["grayscale"][0],
                "bit_depth": int(batch["bit_depth"][0]), "notes": notes + more,
                "reference": ref_path if referenced else "",
                "tile_edges": (sorted({e for rows, _ in edges for e in rows}),
                               sorted({e for _, cols in edges for e in cols}))}


class PipelineModule(L.LightningModule):
    """An `SRPipeline` as a LightningModule for `Trainer.predict` (device placement, precision, writers)."""

    def __init__(self, pipeline: SRPipeline) -> None:
        super().__init__()
        self.pipeline = pipeline
        self.generator = pipeline.generator

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self.pipeline.predict_batch(batch)
