"""Tiny end-to-end recipes that drive the command-line tools: the portrait set of the package
photos and the tiny full-objective config pointed at local files (tests, notebooks, benchmarks).

They sit above `headsup.tools` and `headsup.cli`, which they call; `headsup.testing.tiny` (the
stand-in models and weight files) stays below them, so the tools can import it without a circle.
"""

from __future__ import annotations

from pathlib import Path


# thresholds that admit the half-size package portraits of `headsup-tools samples`
TINY_PORTRAIT_FILTER = ["--min-long-side", "200", "--min-short-side", "200", "--min-eye-distance", "10"]


def prepare_tiny_portrait_set(samples_dir: str | Path) -> Path:
    """Run the `headsup-tools prepare` steps (faces, references from folders, portrait-set with
    relaxed thresholds, no test split) on SAMPLES/portrait; returns SAMPLES/portrait_set/train.jsonl."""
    from headsup.tools import main

    samples = Path(samples_dir)
    root, out = samples / "portrait", samples / "portrait_set"
    steps = [
        ["prepare", "faces", str(root), "--workers", "0"],
        ["prepare", "references", str(root / "faces.jsonl"), "--from-folders", "--overwrite"],
        ["prepare", "portrait-set", str(root / "faces.jsonl"), "--references", str(root / "references.jsonl"),
         "--out", str(out), "--test-fraction", "0", "--overwrite", *TINY_PORTRAIT_FILTER],
    ]
    for args in steps:
        if main(args) != 0:
            raise RuntimeError(f"headsup-tools {' '.join(args)} failed")
    return out / "train.jsonl"


def localize_tiny_headsup(cfg: dict, run_dir: str | Path, samples: str | Path, backbone: str | Path,
                          weights: dict[str, Path], portraits: str | Path) -> dict:
    """configs/experiments/tiny_headsup.yaml (loaded as `cfg`) pointed at given files: the run
    folder (logs, checkpoints), the samples folder, the tiny backbone, the random stand-in weights
    of `write_tiny_weights` and the portrait manifest of `prepare_tiny_portrait_set`. Returns a copy."""
    import copy

    from headsup.cli import place_run

    cfg = place_run(copy.deepcopy(cfg), run_dir)
    model = cfg["model"]
    model["generator"]["init_args"]["backbone"] = {"class_path": "headsup.models.backbone.DiffusersFolder",
                                                   "init_args": {"path": str(backbone)}}
    obj = model["objectives"]
    for name in ("lpips", "face_lpips"):
        if name in obj:
            obj[name]["init_args"]["vgg_weights"] = str(weights["vgg"])
    if "identity" in obj:
        obj["identity"]["init_args"]["identity"]["init_args"]["weights"] = str(weights["facenet"])
    for name in ("face_gan", "gan"):
        if name in obj:
            obj[name]["init_args"]["discriminator"]["init_args"]["weights"] = str(weights["test_resnet"])
    data = cfg["data"]
    data["train"][0]["manifest"] = str(portraits)
    data["train"][1]["hq"] = str(Path(samples) / "train")
    data["val_sets"][0]["hq"] = str(Path(samples) / "test" / "portrait")
    return cfg
