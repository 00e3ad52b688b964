"""Named dataset descriptions used for training, validation and test sets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class DatasetSpec:
    """One named set of images.

    Exactly one of `hq` (a folder) or `manifest` (a file listing images) gives the HQ
    images. With `lq` the set is paired: LQ and HQ files are matched by file name stem.
    Without it, LQ is synthesised by the DataModule's degradation with parameters seeded
    by `seed + index`, so the set is the same in every run.

    Args:
        name: Set name used in logs and result tables.
        hq: Folder of HQ images (searched recursively).
        lq: Folder of LQ images paired with `hq` by file name; alone, an LQ-only test set (real
            photos without ground truth, scored by no-reference metrics).
        manifest: Text file with one image path per line (relative to the file), or JSON
            Lines with a "path" field.
        kind: What the set holds: portrait (faces and references from a `headsup-tools prepare`
            manifest), general (no faces) or face (FFHQ-style aligned faces on the 5-point template).
        seed: Base seed of the synthetic degradation of HQ-only evaluation sets.
        center_crop: Evaluate on a centred HQ crop of this size (None: whole image).
        repeat: Times the set is repeated per training epoch.
        weight: Sampling weight of the set in a training mixture (None: in proportion to its
            size). Setting it on any training set draws sets by weight (MixtureSampler).
        prompts: Per-image prompts (`headsup.data.prompts`): "txt" (`<stem>.txt` beside each image),
            "manifest" (each record's "prompt") or a .jsonl map. None: no per-image prompt.
        prompt: One prompt for every image of the set (instead of `prompts`).
        sr: Folder of a method's saved outputs, paired with `hq` by file name: `headsup test` scores
            these images as they are (no model run, no colour fix) under `model.method`; with `lq`
            the bicubic row too (the SR-folder-vs-HQ mode, for any method's released results).
    """

    name: str
    hq: str | None = None
    lq: str | None = None
    manifest: str | None = None
    kind: Literal["portrait", "general", "face"] = "general"
    seed: int = 0
    center_crop: int | None = None
    repeat: int = 1
    weight: float | None = None
    prompts: str | None = None
    prompt: str | None = None
    sr: str | None = None
