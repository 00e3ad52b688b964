"""Latency of one-step SR at SD 2.1-base size: fp32 vs bf16, unmerged vs merged LoRA, same run.

The generator is `OneStepSR` built from the SD 2.1-base UNet/VAE configs with random weights
(speed does not depend on weight values) and the default LoRA (rank 4). One call = bicubic
upsampling, VAE encode, one UNet call, VAE decode, for an LQ of output/4.

    python benchmarks/inference_latency.py [--sizes 512] [--device cpu|cuda] [--repeats 2]
        [--tile-size 32 --tile-overlap 16 --norm-passes 0 2]

With --tile-size, each size also runs tiled at every stage (tiling "always", bf16, merged LoRA)
for each --norm-passes value, next to the same configuration untiled, and reports the time ratio
and the mean |tiled - untiled| of the output.

Peak memory: CUDA peak allocated per configuration on a GPU; on the CPU only the process's
peak RSS over the whole run. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="output sides (square)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration (after 1 warm-up)")
    parser.add_argument("--tile-size", type=int, default=None, help="latent tile side for the tiled comparison")
    parser.add_argument("--tile-overlap", type=int, default=16)
    parser.add_argument("--norm-passes", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--skip-untiled-grid", action="store_true", help="only the tiled comparison")
    args = parser.parse_args()
    from headsup.models.backbone import FromConfig
    from headsup.models.generator import OneStepSR

    dev = torch.device(args.device)
    torch.manual_seed(0)
    gen = OneStepSR(FromConfig(), tiling="never").eval().to(dev)
    rows = []

    def timed(lq, dtype):
        times = []
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            for i in range(args.repeats + 1):
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = gen(lq)
                if dev.type == "cuda":
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - start)
        return out.float(), min(times)

    for size in args.sizes:
        lq = torch.rand(1, 3, size // 4, size // 4, device=dev)
        if args.tile_size:
            gen.merge_lora, gen.tiling = True, "never"
            whole, base = timed(lq, torch.bfloat16)
            rows.append({"size": size, "dtype": "bfloat16", "merged_lora": True, "tiling": "never",
                         "seconds": round(base, 3)})
            print(rows[-1])
            gen.tiling, gen.tile_size, gen.tile_overlap = "always", args.tile_size, args.tile_overlap
            for passes in args.norm_passes:
                gen.norm_passes = passes
                out, sec = timed(lq, torch.bfloat16)
                rows.append({"size": size, "dtype": "bfloat16", "merged_lora": True, "tiling": "always",
                             "tile_size": args.tile_size, "tile_overlap": args.tile_overlap, "norm_passes": passes,
                             "seconds": round(sec, 3), "time_ratio_to_untiled": round(sec / base, 2),
                             "mean_abs_diff_to_untiled": round(float((out - whole).abs().mean()), 4)})
                if dev.type == "cuda":
                    rows[-1]["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                print(rows[-1])
            gen.tiling, gen.merge_lora = "never", False
        if args.skip_untiled_grid:
            continue
        for dtype in (torch.float32, torch.bfloat16):
            for merged in (False, True):
                gen.merge_lora = merged
                out, sec = timed(lq, dtype)
                assert out.shape[-1] == size
                row = {"size": size, "dtype": str(dtype).removeprefix("torch."), "merged_lora": merged,
                       "seconds": round(sec, 3)}
                if dev.type == "cuda":
                    row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
                rows.append(row)
                print(row)
        gen.merge_lora = False
    device = (torch.cuda.get_device_name() if dev.type == "cuda"
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    print(json.dumps({"results": rows, "device": device, "torch": torch.__version__,
                      "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
