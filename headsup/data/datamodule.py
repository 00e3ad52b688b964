"""SRDataModule: HQ crops for training, named evaluation sets, and on-device degradation.

Datasets return HQ images only (or LQ/HQ pairs for paired sets); the degradation runs
in `on_after_batch_transfer`, batched on the batch's device and outside autocast.
Training draws parameters from a generator seeded with seed + global rank; HQ-only
evaluation sets draw each image's parameters from its own index seed. Optionally, as in
Real-ESRGAN, training targets are USM-sharpened and pairs go through a per-rank pool.
Annotated sets also carry face boxes/landmarks (HQ pixels) and get a soft face mask here;
training items can carry an aligned same-identity reference face.
"""

from __future__ import annotations

import warnings
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from headsup.data.datasets import EvalDataset, PredictDataset, RandomCropDataset
from headsup.data.faces import soft_face_mask
from headsup.data.sampling import MixtureSampler
from headsup.data.specs import DatasetSpec
from headsup.degradations import BicubicDegradation, Degradation
from headsup.degradations.functional import usm_sharpen
from headsup.degradations.pool import PairPool


def collate(items: list[dict]) -> dict[str, Any]:
    """Stack tensors of equal shape; keep everything else as lists. Where some items of a mixture
    have a prompt, the others' is None (the model's own fixed prompt)."""
    if any("prompt" in item for item in items):
        items = [item if "prompt" in item else {**item, "prompt": None} for item in items]
    out: dict[str, Any] = {}
    for key in items[0]:
        values = [item[key] for item in items]
        if isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
            out[key] = torch.stack(values)
        elif isinstance(values[0], (int, float)) and not isinstance(values[0], bool):
            out[key] = torch.tensor(values)
        else:
            out[key] = values
    return out


class SRDataModule(L.LightningDataModule):
    """Training crops, validation/test sets and prediction inputs for super-resolution.

    Args:
        train: HQ sets to draw random training crops from.
        val_sets: Named validation sets (paired, or HQ-only with deterministic degradation).
        test_sets: Named test sets, one dataloader each.
        degradation: HQ -> LQ model applied on the device to training and HQ-only sets.
        crop_size: HQ training crop size (a multiple of the scale).
        batch_size: Training batch size per device.
        eval_batch_size: Validation/test batch size (1 for whole images of different sizes).
        num_workers: DataLoader worker processes.
        seed: Base seed of the training degradation generator (plus the global rank).
        predict_input: Image file or folder to enhance with `predict`.
        predict_reference: Reference photo for reference-conditioned models in `predict`: one file
            for every input, or a folder matched to the inputs by relative path and stem.
        predict_prompts: Tags of each `predict` input: "txt" (`<stem>.txt` beside it, e.g. from
            `headsup-tools prepare prompts`) or a .jsonl map.
        predict_prompt: The user's prompt for every `predict` input.
        predict_prompt_format: The text of an input from its `{tags}` and the user's `{prompt}`; OSEDiff's
            test script uses "{tags}, {prompt},". Without either option the model's fixed prompt is used.
        sharpen_gt: Real-ESRGAN's USM-sharpened GT for training: LQ is made from the sharpened HQ,
            `hq` becomes the sharpened target of pixel/perceptual losses and `hq_orig` keeps the
            original (for adversarial terms).
        pool_size: Training-pair pool per rank (Real-ESRGAN uses 180); 0 disables it.
        face_crop_prob: Probability that a training crop keeps a whole face (annotated sets).
        max_faces: Face slots per item (`face_boxes`, `face_landmarks`, `face_valid`).
        reference_size: Side of the aligned same-identity reference face returned with each
            training item (`reference`, `has_reference`); None: no references.
        samples_per_epoch: Items per epoch when sets are mixed by weight (default: their total).
    """

    def __init__(
        self,
        train: list[DatasetSpec] | None = None,
        val_sets: list[DatasetSpec] | None = None,
        test_sets: list[DatasetSpec] | None = None,
        degradation: Degradation | None = None,
        crop_size: int = 256,
        batch_size: int = 4,
        eval_batch_size: int = 1,
        num_workers: int = 2,
        seed: int = 0,
        predict_input: str | None = None,
        predict_reference: str | None = None,
        predict_prompts: str | None = None,
        predict_prompt: str | None = None,
        predict_prompt_format: str = "{tags}",
        sharpen_gt: bool = False,
        pool_size: int = 0,
        face_crop_prob: float = 0.5,
        max_faces: int = 4,
        reference_size: int | None = None,
        samples_per_epoch: int | None = None,
    ) -> None:
        super().__init__()
        self.train_specs = list(train or [])
        self.val_specs = list(val_sets or [])
        self.test_specs = list(test_sets or [])
        self.degradation = degradation or BicubicDegradation()
        self.scale = self.degradation.scale
        if crop_size % self.scale:
            raise ValueError(f"data.crop_size={crop_size} is not a multiple of the scale {self.scale}")
        self.crop_size = crop_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.predict_input = predict_input
        self.predict_reference = predict_reference
        self.predict_prompts, self.predict_prompt = predict_prompts, predict_prompt
        self.predict_prompt_format = predict_prompt_format
        self.predict_skip = None  # relative input path -> skip it (set by the PredictWriter: output exists)
        self.predict_skipped: list = []
        self.sharpen_gt = sharpen_gt
        if pool_size and pool_size % batch_size:
            raise ValueError(f"data.pool_size={pool_size} is not a multiple of data.batch_size={batch_size}")
        self.pool = PairPool(pool_size) if pool_size else None
        if not 0 <= face_crop_prob <= 1:
            raise ValueError(f"data.face_crop_prob must be within [0, 1], got {face_crop_prob}")
        self.face_crop_prob = face_crop_prob
        self.max_faces = max_faces
        self.reference_size = reference_size
        self.samples_per_epoch = samples_per_epoch
        self._generator: torch.Generator | None = None
        self.completed_test_sets = set  # callable -> sets a resumed sweep already has (set by ResultsWriter)
        self.missing_test_sets: dict[str, str] = {}  # set name -> why it could not be loaded
        self._active_test_specs: list[DatasetSpec] | None = None
        for specs in (self.val_specs, self.test_specs):
            names = [s.name for s in specs]
            if len(set(names)) != len(names):
                raise ValueError(f"dataset names must be unique, got {names}")

    @property
    def test_names(self) -> list[str]:
        return [s.name for s in (self._active_test_specs if self._active_test_specs is not None else self.test_specs)]

    @property
    def val_names(self) -> list[str]:
        return [s.name for s in self.val_specs]

    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool, sampler=None,
                training: bool | None = None) -> DataLoader:
        training = (shuffle or sampler is not None) if training is None else training
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            drop_last=training,
            persistent_workers=training and self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def _eval_loader(self, spec: DatasetSpec) -> DataLoader:
        dataset = EvalDataset(spec, self.scale, self.max_faces, self.reference_size)
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # every image exactly once across ranks (Lightning's default pads uneven sets with repeats)
            from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(dataset, shuffle=False)
        return self._loader(dataset, self.eval_batch_size, False, sampler=sampler, training=False)

    def train_dataloader(self) -> DataLoader:
        if not self.train_specs:
            raise ValueError("no training data: set data.train to a list of DatasetSpec")
        sets = [RandomCropDataset(s, self.crop_size, face_crop_prob=self.face_crop_prob, max_faces=self.max_faces,
                                  reference_size=self.reference_size) for s in self.train_specs]
        if any(d.prompts is not None for d in sets):  # every batch then has "prompt" (None: the model's fixed one)
            for d in sets:
                d.prompts = d.prompts if d.prompts is not None else [None] * len(d.records)
        dataset = ConcatDataset(sets)
        if all(s.weight is None for s in self.train_specs):
            return self._loader(dataset, self.batch_size, shuffle=True)
        weights = [s.weight if s.weight is not None else 1.0 for s in self.train_specs]
        sampler = MixtureSampler([len(d) for d in sets], weights, self.samples_per_epoch, seed=self.seed)
        return self._loader(dataset, self.batch_size, shuffle=False, sampler=sampler, training=True)

    def val_dataloader(self) -> list[DataLoader]:
        return [self._eval_loader(s) for s in self.val_specs]

    def test_dataloader(self) -> list[DataLoader]:
        """One loader per test set. Sets already in the results (a resumed sweep) are left out;
        a set whose folder or manifest is missing is reported and skipped, the others still run."""
        if not self.test_specs:
            raise ValueError("no test sets: set data.test_sets to a list of DatasetSpec")
        loaders, active = [], []
        self.missing_test_sets = {}
        done = self.completed_test_sets()
        for spec in self.test_specs:
            if spec.name in done:
                continue
            try:
                loaders.append(self._eval_loader(spec))
            except FileNotFoundError as err:
                warnings.warn(f"test set '{spec.name}' skipped: {err}", stacklevel=2)
                self.missing_test_sets[spec.name] = str(err)
                continue
            active.append(spec)
        if self.missing_test_sets and not active and not done:
            raise FileNotFoundError("no test set could be loaded: " + "; ".join(self.missing_test_sets.values()))
        self._active_test_specs = active
        return loaders

    def predict_dataloader(self) -> DataLoader:
        if self.predict_input is None:
            raise ValueError("nothing to predict: set --data.predict_input to an image file or folder")
        dataset = PredictDataset(self.predict_input, self.predict_reference, self.predict_skip,
                                 prompts=self.predict_prompts, prompt=self.predict_prompt,
                                 prompt_format=self.predict_prompt_format)
        self.predict_skipped = dataset.skipped
        return self._loader(dataset, 1, False)

    def _train_generator(self, device: torch.device) -> torch.Generator:
        if self._generator is None or self._generator.device != device:
            rank = self.trainer.global_rank if self.trainer is not None else 0
            self._generator = torch.Generator(device=device).manual_seed(self.seed + rank)
        return self._generator

    @torch.no_grad()
    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        if "face_boxes" in batch and "hq" in batch:  # soft mask of the (HQ-pixel) face boxes
            batch["face_mask"] = soft_face_mask(batch["face_boxes"], batch["face_valid"], *batch["hq"].shape[-2:])
        if "hq" not in batch or "lq" in batch:
            return batch
        hq = batch["hq"].float()
        training = self.trainer is not None and self.trainer.training
        with torch.autocast(device_type=hq.device.type, enabled=False):
            if training:
                generator = self._train_generator(hq.device)
                if self.sharpen_gt:
                    batch["hq_orig"], hq = hq, usm_sharpen(hq)
                params = self.degradation.sample(hq.shape[0], generator=generator, device=hq.device)
            else:
                params = self.degradation.sample_indexed(batch["seed"].tolist(), device=hq.device)
            batch["lq"] = self.degradation(hq, params)
        batch["hq"] = hq
        if training and self.pool is not None:
            batch = self.pool(batch, generator)
        return batch
