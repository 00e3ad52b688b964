"""SRSystem: the LightningModule that trains a one-step SR generator; evaluation goes to an `Evaluator`
(headsup.metrics.evaluator: scores per set and method, the bicubic row, seams), prediction to an
`SRPipeline` (headsup.inference.pipeline: faces, references, the fp32 retry).

Training step (manual optimisation): one generator pass; the weighted sum of the
active objectives' generator losses; one generator update; then each objective
that owns trainable helpers (fake score, discriminator) steps on its auxiliary
loss. Generator updates are counted in a buffer (`generator_updates`), since
`trainer.global_step` counts every optimizer step.

Checkpoints hold only what is trained: the keys of parameters that required
gradients at construction (LoRA, conv_in, helpers) plus the update counter. Frozen
weights come back from the backbone source when the model is built.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchvision.utils import make_grid

from headsup.callbacks.ema import averaged_weights
from headsup.inference.pipeline import SRPipeline, batch_conditioning
from headsup.metrics.evaluator import Evaluator
from headsup.metrics.extra import ExtraMetric
from headsup.models.backbone import fingerprint
from headsup.objectives.base import Objective, StepContext
from headsup.objectives.reconstruction import PixelMSE

# Frozen weights are deliberately absent from checkpoints; `on_load_checkpoint` checks the keys itself.
warnings.filterwarnings("ignore", message="Found keys that are in the model state dict but not in the checkpoint")


def _adamw(params):
    return torch.optim.AdamW(params, lr=5e-5)


class SRSystem(L.LightningModule):
    """Trains `generator` with named objectives; evaluates PSNR/SSIM against bicubic.

    Args:
        generator: The one-step SR generator (`OneStepSR`); for evaluation only, any SR model with a
            `scale`, e.g. the blending baseline (`headsup.inference.blending.BlendingBaseline`).
        objectives: Named loss terms, e.g. {"mse": PixelMSE, "lpips": LPIPSLoss}; the name is
            the log key and the command-line handle (`--model.objectives.mse.init_args.weight`).
        optimizer: Generator optimizer (over trainable generator parameters).
        lr_scheduler: Optional scheduler of the generator optimizer, stepped per update.
        grad_clip: Max gradient norm of the generator update (None: no clipping).
        method: Name of this model in result tables.
        log_images: Validation images per set logged as LQ / SR / HQ grids.
        metrics: Evaluation metrics besides PSNR/SSIM (Y and RGB) and the seam score, by result
            name, e.g. {"lpips": LPIPSMetric, "musiq": PyiqaMetric, "deg": IdentityCosine}; those
            whose weights are missing are reported as unavailable.
        eval_color_fix: Colour correction of SR towards the LQ before validation/test metrics and saved
            test images: "adain" (OSEDiff's test protocol, the default), "wavelet" or "none";
            recorded in results.json. The bicubic row is never corrected.
        accumulate: Batches whose gradients make one update (of the generator and of each helper),
            each loss divided by it: `data.batch_size` x `accumulate` x GPUs samples per update (OSEDiff:
            16). `trainer.max_steps` and checkpoint intervals count updates; `val_check_interval`
            counts batches.
        max_bad_steps: A generator update whose loss or gradient is NaN/inf (on any rank) is skipped,
            logged (`train/skipped_steps`) and warned about; this many in a row stop training with
            an error, before NaN can reach the weights or a checkpoint.
    """

    def __init__(
        self,
        generator: nn.Module,
        objectives: dict[str, Objective] | None = None,
        optimizer: OptimizerCallable = _adamw,
        lr_scheduler: LRSchedulerCallable | None = None,
        grad_clip: float | None = 1.0,
        method: str = "headsup",
        log_images: int = 2,
        metrics: dict[str, ExtraMetric] | None = None,
        max_bad_steps: int = 10,
        accumulate: int = 1,
        eval_color_fix: str = "adain",
    ) -> None:
        super().__init__()
        # Under the CLI the hyperparameters are the parsed config (class paths and init args);
        # built by hand, the component objects are not stored.
        under_cli = _given_hyperparameters.get() is not None
        self.save_hyperparameters(ignore=[] if under_cli else ["generator", "objectives", "optimizer", "lr_scheduler"])
        self.automatic_optimization = False
        self.strict_loading = False
        self.generator = generator
        self.objectives = nn.ModuleDict(objectives if objectives is not None else {"mse": PixelMSE()})
        if not self.objectives:
            raise ValueError("model.objectives is empty: give at least one loss term")
        for objective in self.objectives.values():
            objective.bind(generator)
        source = getattr(generator, "backbone_source", None)
        if source is not None:
            source.release()  # every part that embeds prompts is built: drop the text encoder
        self.optimizer_fn = optimizer
        self.lr_scheduler_fn = lr_scheduler
        self.grad_clip = grad_clip
        self.log_images = log_images
        self.evaluator = Evaluator(metrics, method, eval_color_fix)
        self.register_buffer("generator_updates", torch.zeros((), dtype=torch.long))
        self.max_bad_steps = max_bad_steps
        if accumulate < 1:
            raise ValueError(f"model.accumulate must be at least 1, got {accumulate}")
        self.accumulate = accumulate
        self._micro = 0  # batches of the current update done so far
        self._accumulated_bad = False  # a non-finite generator loss in the current update
        self._bad_aux: set[str] = set()  # helpers with a non-finite loss in the current update
        self._bad_steps = 0  # consecutive steps skipped for a non-finite loss or gradient
        self.skipped_steps = 0
        self._checkpoint_keys = {n for n, p in self.named_parameters() if p.requires_grad} | {"generator_updates"}
        self._aux_names: list[str] = []
        self.test_results: dict[str, Any] = {}
        self._backbone: dict | None = None  # recorded in checkpoints, computed once
        self._predictor: SRPipeline | None = None  # predict runs through the pipeline, built on first use

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        params = [p for p in self.generator.parameters() if p.requires_grad]
        optimizers = [self.optimizer_fn(params)]
        self._aux_names = []
        for name, objective in self.objectives.items():
            aux = objective.configure_optimizer()
            if aux is not None:
                optimizers.append(aux)
                self._aux_names.append(name)
        if self.lr_scheduler_fn is None:
            return optimizers
        return optimizers, [{"scheduler": self.lr_scheduler_fn(optimizers[0]), "interval": "step"}]

    def on_fit_start(self) -> None:
        # every rank draws its own randomness (VSD timesteps and noise, reference dropout, ...)
        seed = torch.initial_seed() % 2**31 + 1000 * self.global_rank
        for i, objective in enumerate(self.objectives.values()):
            objective.seed(seed + i)
        if hasattr(self.generator, "seed"):  # the blending baseline, evaluation-only, has no randomness
            self.generator.seed(seed + len(self.objectives))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        optimizers = self.optimizers()
        optimizers = optimizers if isinstance(optimizers, list) else [optimizers]
        gen_opt, aux_opts = optimizers[0], dict(zip(self._aux_names, optimizers[1:]))
        step = int(self.generator_updates)
        first, last = self._micro == 0, self._micro == self.accumulate - 1
        self._micro = 0 if last else self._micro + 1
        out = self.generator.generate(batch["lq"], **batch_conditioning(self.generator, batch))
        ctx = StepContext(batch["lq"], batch["hq"], out.image, out.latent, step, batch)

        losses: dict[str, torch.Tensor] = {}
        total = out.image.new_zeros(())
        for name, objective in self.objectives.items():
            if objective.active(step):
                losses[name] = objective.generator_loss(ctx)
                total = total + objective.weight * losses[name]
        if first:
            self._accumulated_bad = False
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
        bs = batch["lq"].shape[0]
        if self._all_ranks_finite(total) and not self._accumulated_bad:
            # helpers the generator loss runs through (a discriminator) are frozen inside it
            self.manual_backward(total / self.accumulate)
            self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, batch_size=bs)
            self.log("train/loss", total.detach(), prog_bar=True, batch_size=bs)
        else:
            self._accumulated_bad = True

        detached = StepContext(ctx.lq, ctx.hq, out.image.detach(), out.latent.detach(), step, batch)
        for name, opt in aux_opts.items():
            objective = self.objectives[name]
            if not objective.active(step) or name in self._bad_aux:
                continue
            aux = objective.aux_loss(detached)
            if not self._all_ranks_finite(aux):
                rank_zero_warn(f"step {step}: {name}'s own loss is not finite; its update is skipped")
                self._bad_aux.add(name)
                continue
            self.manual_backward(aux / self.accumulate)
            self.log(f"train/{name}_aux", aux.detach(), batch_size=bs)
        if last:
            self._update(gen_opt, aux_opts, losses, step)
        # running values on every batch, so that any `log_every_n_steps` sees them
        self.log("train/lr", gen_opt.param_groups[0]["lr"], batch_size=bs)
        self.log("train/generator_updates", float(self.generator_updates), batch_size=bs)
        self.log("train/skipped_steps", float(self.skipped_steps), batch_size=bs)
        return total.detach()

    def _update(self, gen_opt, aux_opts: dict, losses: dict, step: int) -> None:
        """Step the generator and the helpers on the gradients of the last `accumulate` batches."""
        bad_aux, self._bad_aux = self._bad_aux, set()
        if self._accumulated_bad or not self._all_ranks_finite(
                *(p.grad for p in self.generator.parameters() if p.grad is not None)):
            for opt in aux_opts.values():
                opt.zero_grad(set_to_none=True)
            self._skip_step(gen_opt, losses, step)
            return
        self._bad_steps = 0
        if self.grad_clip:
            self.clip_gradients(gen_opt, gradient_clip_val=self.grad_clip, gradient_clip_algorithm="norm")
        gen_opt.step()
        for name, opt in aux_opts.items():
            if not self.objectives[name].active(step) or name in bad_aux:
                continue
            clip = self.objectives[name].aux_grad_clip
            if clip:
                torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], clip)
            # the raw optimizer: Lightning's wrapper would count this step in trainer.global_step,
            # which must stay the number of generator updates (max_steps, checkpoint intervals)
            getattr(opt, "optimizer", opt).step()
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()
        self.generator_updates += 1

    def _all_ranks_finite(self, *tensors: torch.Tensor) -> bool:
        """Whether every tensor is finite on every rank (one decision for all, so DDP ranks skip together)."""
        tensors = [t for t in tensors if t is not None]
        bad = torch.zeros((), device=self.device)
        if tensors:
            norms = torch._foreach_norm([t.detach().float() for t in tensors])
            bad = (~torch.isfinite(torch.stack(norms))).any().float()
        if self._trainer is not None and self.trainer.world_size > 1:
            bad = self.trainer.strategy.reduce(bad, reduce_op="max")
        return not bool(bad)

    def _skip_step(self, optimizer, losses: dict, step: int) -> torch.Tensor:
        """Drop a generator update whose loss or gradient is NaN/inf; stop after `max_bad_steps` in a row."""
        optimizer.zero_grad(set_to_none=True)
        self._bad_steps += 1
        self.skipped_steps += 1
        terms = ", ".join(f"{k}={float(v.detach()):.4g}" for k, v in losses.items())
        if self._bad_steps >= self.max_bad_steps:
            raise FloatingPointError(
                f"{self._bad_steps} generator updates in a row had a non-finite loss or gradient (last, at "
                f"update {step}: {terms}); stopped before any NaN reached the weights. Lower the learning "
                f"rate, check the data, or resume from the last checkpoint (model.max_bad_steps sets the limit)")
        rank_zero_warn(f"generator update {step} skipped: non-finite loss or gradient ({terms})")
        return torch.zeros((), device=self.device)

    # ------------------------------------------------------------------ evaluation
    @property
    def method(self) -> str:
        """Name of this model in result tables (`Evaluator.method`)."""
        return self.evaluator.method

    @property
    def metric_settings(self) -> dict:
        """What the results files record about the metrics (`Evaluator.settings`)."""
        return self.evaluator.settings

    def _evaluate(self, stage: str, batch: dict, batch_idx: int, dataloader_idx: int) -> dict:
        dm = getattr(self.trainer, "datamodule", None)
        names = getattr(dm, f"{stage}_names", None) if dm is not None else None
        name = names[dataloader_idx] if names else f"set{dataloader_idx}"
        saved = "sr" in batch  # a method's saved outputs (the set's `sr` folder): scored, not generated
        sr = batch["sr"] if saved else self.generator(batch["lq"], **batch_conditioning(self.generator, batch))
        sr, scores = self.evaluator.update(stage, name, batch, sr, self.generator.scale, saved=saved)
        return {"set": name, "sr": sr, "names": batch["name"], "scores": scores, "saved": saved}

    def _finish(self, stage: str) -> dict[str, dict[str, dict[str, float]]]:
        results, flat = self.evaluator.finish(stage)
        if stage == "val":
            self.log_dict(flat)
        elif self.logger is not None and flat:
            self.logger.log_metrics(flat, step=int(self.generator_updates))
        return results

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        out = self._evaluate("val", batch, batch_idx, dataloader_idx)
        if batch_idx < self.log_images and isinstance(self.logger, TensorBoardLogger) and "hq" in batch \
                and "lq" in batch:
            lq_up = F.interpolate(batch["lq"].float(), scale_factor=self.generator.scale, mode="nearest")
            grid = make_grid(torch.cat([lq_up[:1], out["sr"][:1], batch["hq"][:1].float()]).clamp(0, 1), nrow=3)
            self.logger.experiment.add_image(
                f"val/{out['set']}/{out['names'][0]}", grid, global_step=int(self.generator_updates)
            )

    def on_validation_epoch_end(self) -> None:
        self._unmerge()
        self._finish("val")

    def _unmerge(self) -> None:
        """Take merged LoRA updates back out of the base weights before a checkpoint is saved or the
        EMA swaps weights back (conv_in's base weight is LoRA-wrapped and trained: a merged copy
        would be saved with the update folded in, and applied twice on loading)."""
        if getattr(self.generator, "_merged", False):
            self.generator.set_lora_merged(False)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        return self._evaluate("test", batch, batch_idx, dataloader_idx)

    def on_test_epoch_end(self) -> None:
        self._unmerge()
        self.test_results = self._finish("test")

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        if self._predictor is None or self._predictor.generator is not self.generator:
            dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
            # the writer fixes colours (--writer.color_fix); faces and references as the data module sizes them
            self._predictor = SRPipeline(self.generator, color_fix="none",
                                         reference_size=getattr(dm, "reference_size", None) or 512,
                                         max_faces=getattr(dm, "max_faces", 4))
        return self._predictor.predict_batch(batch)

    # ------------------------------------------------------------------ checkpoints
    def setup(self, stage: str) -> None:
        precision = str(getattr(self._trainer, "precision", "")) if self._trainer is not None else ""
        helpers = [n for n, o in self.objectives.items()
                   if type(o).configure_optimizer is not Objective.configure_optimizer]
        if stage == "fit" and precision.startswith("16") and helpers:
            raise ValueError(f"trainer.precision={precision} needs a gradient scaler, which the auxiliary "
                             f"optimizers of {helpers} do not use: train with bf16-mixed or 32-true")
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        scale = getattr(dm, "scale", None)
        if scale is not None and scale != self.generator.scale:
            raise ValueError(
                f"data.degradation scale ({scale}) differs from model.generator scale ({self.generator.scale})"
            )

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in self._checkpoint_keys}
        source = getattr(self.generator, "backbone_source", None)
        if source is not None:  # the backbone's architecture, checked where the weights are loaded elsewhere
            if self._backbone is None:
                try:
                    arch = source.architecture()
                    self._backbone = {"fingerprint": fingerprint(arch), "architecture": arch}
                except (OSError, ValueError, NotImplementedError) as err:  # never a reason to lose a checkpoint
                    rank_zero_warn(f"backbone architecture not recorded in checkpoints: {err}")
                    self._backbone = {}
            if self._backbone:
                checkpoint["backbone"] = self._backbone
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "max_faces"):  # how inference elsewhere sizes faces and references
            checkpoint["faces"] = {"reference_size": getattr(dm, "reference_size", None) or 512,
                                   "max_faces": dm.max_faces}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = checkpoint.get("state_dict", {})
        fitting = self._trainer is not None and self.trainer.state.fn == "fit"
        if not fitting:  # evaluation and inference use the run's average weights (TrainableEMA) when it has them
            ema = {k: v for k, v in averaged_weights(checkpoint).items() if k in saved}
            saved = checkpoint["state_dict"] = {**saved, **ema}
        own = self.state_dict()
        unexpected = sorted(set(saved) - set(own))
        missing = sorted(self._checkpoint_keys - set(saved))
        wrong = sorted(k for k in set(saved) & set(own) if saved[k].shape != own[k].shape)
        if unexpected or missing or wrong:
            raise RuntimeError(
                "checkpoint does not fit this model (another configuration or model shape?): "
                f"{len(missing)} trainable tensors missing {missing[:3]}, {len(unexpected)} unexpected "
                f"{unexpected[:3]}, {len(wrong)} of another shape {wrong[:3]}"
            )

