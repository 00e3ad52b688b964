"""Generator updates/s and peak memory: the full HeadsUp objective vs MSE + LPIPS only.

Both variants train the same generator (same backbone, LoRA, reference conditioning) through
the real CLI and Trainer on the same data; only `model.objectives` differs. Each variant runs
in its own process so peak memory is its own (peak RSS on the CPU, peak allocated CUDA memory
on a GPU). Weights are random (`TinySD`, or the SD 2.1-base architecture with `--size sd21`,
which needs a GPU to be practical); LPIPS, facenet and discriminator weights are the random
stand-ins of `headsup-tools tiny-weights`: speed does not depend on weight values.

    python benchmarks/training_throughput.py [--size tiny|sd21] [--steps 12] [--warmup 3]
        [--crop 64] [--batch 2] [--device cpu|cuda]

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FULL = ROOT / "configs" / "experiments" / "tiny_headsup.yaml"


def _prepare(work: Path) -> dict:
    """Samples, a tiny portrait set and stand-in weights under `work`."""
    from headsup.testing.recipes import prepare_tiny_portrait_set
    from headsup.testing.tiny import write_tiny_weights
    from headsup.tools import write_samples

    samples = work / "samples"
    write_samples(samples)
    prepare_tiny_portrait_set(samples)
    return {"samples": samples, "weights": write_tiny_weights(work / "weights")}


def _config(work: Path, inputs: dict, variant: str, args) -> Path:
    import yaml

    cfg = yaml.safe_load(FULL.read_text())
    run = work / f"run_{variant}"
    cfg["trainer"].update(default_root_dir=str(run), max_steps=args.warmup + args.steps, val_check_interval=10**6,
                          logger=False, callbacks=[], enable_checkpointing=False, enable_progress_bar=False,
                          accelerator=args.device, precision="bf16-mixed" if args.device == "cuda" else "32-true")
    backbone = ({"class_path": "headsup.testing.tiny.TinySD", "init_args": {}} if args.size == "tiny" else
                {"class_path": "headsup.models.backbone.FromConfig", "init_args": {}})
    model = cfg["model"]
    model["generator"]["init_args"]["backbone"] = backbone
    obj = model["objectives"]
    w = inputs["weights"]
    for name in ("lpips", "face_lpips"):
        obj[name]["init_args"].update(vgg_weights=str(w["vgg"]), lpips_weights=str(w["lpips"]))
    obj["identity"]["init_args"]["identity"]["init_args"]["weights"] = str(w["facenet"])
    obj.pop("gan")  # the paper's terms only
    obj["face_gan"]["init_args"]["discriminator"]["init_args"]["weights"] = str(w["test_resnet"])
    if variant == "baseline":
        model["objectives"] = {k: obj[k] for k in ("mse", "lpips")}
    data = cfg["data"]
    data["train"][0]["manifest"] = str(inputs["samples"] / "portrait_set" / "train.jsonl")
    data["train"][1]["hq"] = str(inputs["samples"] / "train")
    data["val_sets"] = []
    data.update(crop_size=args.crop, batch_size=args.batch, reference_size=args.crop,
                samples_per_epoch=args.batch * (args.warmup + args.steps + 2))
    path = work / f"{variant}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _run_variant(config: str, warmup: int, device: str) -> dict:
    """In a fresh process: fit, timing the updates after `warmup`; report rate and peak memory."""
    import resource

    import lightning as L
    import torch

    from headsup.cli import build_cli

    class Timer(L.Callback):
        def __init__(self):
            self.times = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if device == "cuda":
                torch.cuda.synchronize()
            self.times.append(time.perf_counter())

    cli = build_cli(["--config", config], run=False)
    timer = Timer()
    cli.trainer.callbacks.append(timer)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    timed = timer.times[warmup - 1 :]
    rate = (len(timed) - 1) / (timed[-1] - timed[0])
    peak = (torch.cuda.max_memory_allocated() if device == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    trainable = sum(p.numel() for p in cli.model.parameters() if p.requires_grad)
    return {"updates_per_s": rate, "peak_bytes": peak, "updates_timed": len(timed) - 1,
            "objectives": sorted(cli.model.objectives), "trainable_params": trainable}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=["tiny", "sd21"], default="tiny")
    parser.add_argument("--steps", type=int, default=12, help="timed generator updates")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first updates")
    parser.add_argument("--crop", type=int, default=64, help="HQ crop side (512 for SD-size runs)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--variant-config", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant_config:  # child process
        print(json.dumps(_run_variant(args.variant_config, args.warmup, args.device)))
        return
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        inputs = _prepare(work)
        results = {}
        for variant in ("baseline", "full"):
            config = _config(work, inputs, variant, args)
            cmd = [sys.executable, __file__, "--variant-config", str(config), "--warmup", str(args.warmup),
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode:
                sys.exit(f"{variant} failed:\n{proc.stderr[-3000:]}")
            results[variant] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = results[variant]
            print(f"{variant}: {r['updates_per_s']:.3f} updates/s, peak {r['peak_bytes'] / 2**30:.2f} GiB, "
                  f"objectives {r['objectives']}")
    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    full, base = results["full"], results["baseline"]
    print(json.dumps({
        "updates_per_s": round(full["updates_per_s"], 3),
        "reference_updates_per_s": round(base["updates_per_s"], 3),
        "ratio": round(full["updates_per_s"] / base["updates_per_s"], 3),
        "peak_memory_gib": round(full["peak_bytes"] / 2**30, 3),
        "reference_peak_memory_gib": round(base["peak_bytes"] / 2**30, 3),
        "memory_kind": "peak CUDA allocated" if args.device == "cuda" else "peak process RSS",
        "size": args.size, "crop": args.crop, "batch": args.batch, "timed_updates": args.steps,
        "device": device, "torch": torch.__version__,
    }))


if __name__ == "__main__":
    main()
