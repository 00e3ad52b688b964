"""Peak activation memory of the untiled stages (VAE encoder, UNet, VAE decoder) at SD 2.1-base size.

Each stage runs once, untiled, under `torch.no_grad()`, in fp32 or bf16 autocast, on random weights (memory does not
depend on weight values), at each output size. Reported per stage: the peak memory the call added
over what was resident before it (on the CPU the Linux high-water mark of the process, reset before
the call through /proc/self/clear_refs; on a GPU `torch.cuda.max_memory_allocated`), and that peak
divided by the bytes of the stage's largest feature map (first-level channels at its full
resolution). The growth of the peak between the two largest sizes, over the growth of that map,
is the factor `headsup.models.runtime.STAGE_PEAK_FACTOR` holds for `tiling: auto` (the fixed
part, which the ratio at small sizes includes, does not grow with the image).

    python benchmarks/stage_memory.py [--sizes 256 512] [--device cpu|cuda] [--tile-size 64]

With --tile-size, each stage also runs tiled at that latent tile side (overlap a quarter of it,
one tile per call, `--norm-passes` passes), to show that the tiled peak is bounded by the tile.

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
from fractions import Fraction
from pathlib import Path

import torch


def _rss(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status (this measurement needs Linux)")


def measure(fn, x: torch.Tensor) -> int:
    """Bytes the call adds at its peak over what is resident before it."""
    if x.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn(x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM) to the current RSS
    before = _rss("VmRSS")
    fn(x)
    return _rss("VmHWM") - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="output sides (square)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile-size", type=int, default=None, help="also measure tiled stages (latent tile side)")
    parser.add_argument("--norm-passes", type=int, default=2)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: under autocast, as `headsup predict` runs with bf16-mixed")
    args = parser.parse_args()
    from headsup.models.backbone import FromConfig
    from headsup.models.generator import OneStepSR

    dev = torch.device(args.device)
    torch.manual_seed(0)
    gen = OneStepSR(FromConfig(), tiling="never").eval().to(dev)
    f = gen.vae_factor
    rows = []
    dtype = getattr(torch, args.dtype)
    with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
        for size in args.sizes:
            image = torch.rand(1, 3, size, size, device=dev) * 2 - 1
            latent = torch.randn(1, gen.latent_channels, size // f, size // f, device=dev)
            stages = {
                "encode": (lambda x: gen.vae.encode(x).latent_dist.mode(), image),
                "unet": (gen.denoise, latent),
                "decode": (lambda z: gen.vae.decode(z).sample, latent),
            }
            for stage, (fn, x) in stages.items():
                fn(x)  # warm-up: one-off allocations (thread pools, kernels) are not the stage's
                peak = max(measure(fn, x) for _ in range(2))
                largest = gen.stage_memory(stage, x.shape, dtype) / gen_factor(stage)
                row = {"stage": stage, "size": size, "peak_gib": round(peak / 2**30, 4),
                       "largest_map_gib": round(largest / 2**30, 4), "ratio": round(peak / largest, 2)}
                rows.append(row)
                print(row, flush=True)
                if args.tile_size:
                    gen.tiling, gen.tile_size, gen.tile_overlap = "always", args.tile_size, args.tile_size // 4
                    gen.tile_batch, gen.norm_passes = 1, args.norm_passes
                    net, factor = (gen.unet, Fraction(1)) if stage == "unet" else (
                        gen.vae, Fraction(1, f) if stage == "encode" else Fraction(f))
                    tiled = max(measure(lambda t: gen._staged(stage, fn, t, net, factor), x) for _ in range(2))
                    gen.tiling = "never"
                    row = {"stage": stage, "size": size, "tiled": args.tile_size, "norm_passes": args.norm_passes,
                           "peak_gib": round(tiled / 2**30, 4), "untiled_peak_gib": rows[-1]["peak_gib"]}
                    rows.append(row)
                    print(row, flush=True)
    growth = {}
    for stage in ("encode", "unet", "decode"):
        a, b = [r for r in rows if r["stage"] == stage and "tiled" not in r][-2:]
        if a["size"] != b["size"]:
            growth[stage] = round((b["peak_gib"] - a["peak_gib"]) / (b["largest_map_gib"] - a["largest_map_gib"]),
                                  2)
    print("factor (peak growth / largest-map growth):", growth)
    device = (torch.cuda.get_device_name() if dev.type == "cuda"
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    print(json.dumps({"results": rows, "factor": growth, "device": device, "dtype": args.dtype,
                      "torch": torch.__version__}))


def gen_factor(stage: str) -> float:
    from headsup.models.runtime import STAGE_PEAK_FACTOR

    return STAGE_PEAK_FACTOR[stage]


if __name__ == "__main__":
    main()
