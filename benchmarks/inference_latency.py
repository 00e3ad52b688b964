"""Latency and peak memory of one-step SR at SD 2.1-base size, configurations side by side in one run.

The generator is `OneStepSR` built from the SD 2.1-base UNet/VAE configs with random weights
(speed does not depend on weight values) and the default LoRA (rank 4). One call = bicubic
upsampling, VAE encode, one UNet call, VAE decode, for an LQ of output/4.

    python benchmarks/inference_latency.py [--sizes 512 1024 3840x2160] [--device cpu|cuda]
        [--repeats 2] [--dtypes float32 bfloat16]
        [--extras channels_last cuda_graphs bf16_weights split_group_norm compile]
        [--budget-gb 8] [--tile-size 32 --tile-overlap 16 --norm-passes 0 2] [--skip-untiled-grid]

Per size: the grid fp32/bf16 autocast x unmerged/merged LoRA (untiled); --extras adds bf16
merged rows with channels-last, CUDA graphs, the weights themselves in bf16 (no autocast; with
and without CUDA graphs and split GroupNorm statistics) and torch.compile (applied last, once,
to the first size only: it changes the modules for the rest of the run; on bf16 weights when
those are asked for too);
--budget-gb adds a bf16 merged row with tiling "auto" under that memory budget; --tile-size a
bf16 merged row per --norm-passes with every stage tiled. Tiled rows report their time and output
difference against the untiled bf16 merged row of the same size (time ratio = per output pixel,
the sizes being equal).

Seconds are the fastest of --repeats timed calls after one warm-up (the median is given too).
Peak memory: CUDA peak allocated per configuration on a GPU (weights included); on the CPU only
the process's peak RSS over the whole run. A configuration that runs out of GPU memory is reported
as such. The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time

import torch


def parse_size(text: str) -> tuple[int, int]:
    """'512' -> (512, 512); '3840x2160' -> (2160, 3840) as (height, width)."""
    w, _, h = text.lower().partition("x")
    return (int(h or w), int(w))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["512"], help="output sizes: N (square) or WxH")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per configuration (after 1 warm-up)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--extras", nargs="*", default=[],
                        choices=["channels_last", "cuda_graphs", "bf16_weights", "split_group_norm", "compile"])
    parser.add_argument("--budget-gb", type=float, default=None, help="memory budget of the tiling 'auto' row")
    parser.add_argument("--auto-tile-size", type=int, default=None, help="latent tile side of the 'auto' row "
                        "(default: the generator's)")
    parser.add_argument("--tile-size", type=int, default=None, help="latent tile side of the tiling 'always' rows")
    parser.add_argument("--tile-overlap", type=int, default=16)
    parser.add_argument("--norm-passes", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--skip-untiled-grid", action="store_true", help="only the bf16 merged untiled baseline")
    args = parser.parse_args()
    from headsup.models.backbone import FromConfig
    from headsup.models.generator import OneStepSR

    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    torch.manual_seed(0)
    gen = OneStepSR(FromConfig(), tiling="never").eval().to(dev)
    rows = []

    def timed(lq, dtype):
        times = []
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype != torch.float32):
            for i in range(args.repeats + 1):
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                out = gen(lq)
                if cuda:
                    torch.cuda.synchronize()
                if i:
                    times.append(time.perf_counter() - start)
        return out.float(), min(times), statistics.median(times)

    def run(row, lq, dtype, base=None):
        """Time one configuration into `row`; returns its output (None when out of memory)."""
        try:
            out, best, median = timed(lq, dtype)
        except torch.OutOfMemoryError:
            row["out_of_memory"] = True
            print(row)
            rows.append(row)
            return None
        except Exception as err:  # a configuration that fails is reported; the others still run
            row["error"] = f"{type(err).__name__}: {err}"[:300]
            gen._graph = None
            print(row)
            rows.append(row)
            return None
        row.update(seconds=round(best, 4), median_s=round(median, 4))
        if cuda:
            row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
        if base is not None and base[0] is not None:
            row["time_ratio_to_untiled"] = round(best / base[1], 2)
            row["mean_abs_diff_to_untiled"] = round(float((out - base[0]).abs().mean()), 4)
        rows.append(row)
        print(row)
        return out, best

    for n, size in enumerate(args.sizes):
        h, w = parse_size(size)
        label = f"{w}x{h}"
        lq = torch.rand(1, 3, h // 4, w // 4, device=dev)
        grid = [(d, m) for d in args.dtypes for m in (False, True)]
        if args.skip_untiled_grid:
            grid = [("bfloat16", True)]
        base = None
        for dname, merged in grid:
            gen.tiling, gen.merge_lora = "never", merged
            got = run({"size": label, "dtype": dname, "merged_lora": merged, "tiling": "never"}, lq,
                      getattr(torch, dname))
            if dname == "bfloat16" and merged:
                base = got if got is not None else (None, None)
        gen.merge_lora = True
        if args.budget_gb is not None:
            default_tile = gen.tile_size, gen.tile_overlap
            gen.tiling, gen.memory_budget_gb, gen.norm_passes = "auto", args.budget_gb, 0
            gen.tile_size = args.auto_tile_size or default_tile[0]
            gen.tile_overlap = min(gen.tile_overlap, gen.tile_size // 2)
            row = {"size": label, "dtype": "bfloat16", "merged_lora": True, "tiling": "auto",
                   "budget_gib": args.budget_gb, "tile_size": gen.tile_size, "tile_overlap": gen.tile_overlap}
            if run(row, lq, torch.bfloat16, base) is not None:
                row["tiled_stages"] = {k: (len(v[0]) + 1) * (len(v[1]) + 1) if v else 1
                                       for k, v in gen.last_tiling.items()}
            gen.tiling, gen.memory_budget_gb, (gen.tile_size, gen.tile_overlap) = "never", None, default_tile
        if args.tile_size:
            saved = gen.tile_size, gen.tile_overlap
            gen.tiling, gen.tile_size, gen.tile_overlap = "always", args.tile_size, args.tile_overlap
            for passes in args.norm_passes:
                gen.norm_passes = passes
                run({"size": label, "dtype": "bfloat16", "merged_lora": True, "tiling": "always",
                     "tile_size": args.tile_size, "tile_overlap": args.tile_overlap, "norm_passes": passes},
                    lq, torch.bfloat16, base)
            gen.tiling, (gen.tile_size, gen.tile_overlap), gen.norm_passes = "never", saved, 0
        if "channels_last" in args.extras:
            gen.channels_last = True
            run({"size": label, "dtype": "bfloat16", "merged_lora": True, "tiling": "never", "channels_last": True},
                lq, torch.bfloat16, base)
            gen.channels_last = False
            gen.unet.to(memory_format=torch.contiguous_format)
            gen.vae.to(memory_format=torch.contiguous_format)
        if "cuda_graphs" in args.extras:
            gen.cuda_graphs = True
            run({"size": label, "dtype": "bfloat16", "merged_lora": True, "tiling": "never", "cuda_graphs": True},
                lq, torch.bfloat16, base)
            gen.cuda_graphs, gen._graph = False, None
        if "bf16_weights" in args.extras:
            # the model itself in bf16 (Lightning's "bf16-true"), no autocast; fp32 weights restored after
            gen.set_lora_merged(False)
            saved = {k: v.detach().cpu().clone() for k, v in gen.state_dict().items()}
            gen.to(torch.bfloat16)
            variants = [(False, False)] + [(True, False)] * ("cuda_graphs" in args.extras)
            if "split_group_norm" in args.extras:
                variants += [(False, True)] + [(True, True)] * ("cuda_graphs" in args.extras)
            for graphs, split in variants:
                gen.cuda_graphs, gen.split_group_norm = graphs, split
                run({"size": label, "dtype": "bfloat16 weights", "merged_lora": True, "tiling": "never",
                     "cuda_graphs": graphs, "split_group_norm": split}, lq.bfloat16(), torch.float32, base)
                gen.cuda_graphs, gen.split_group_norm, gen._graph = False, False, None
            if "compile" not in args.extras or n < len(args.sizes) - 1:
                gen.set_lora_merged(False)
                gen.float().load_state_dict(saved)
        if "compile" in args.extras and n == len(args.sizes) - 1:
            first = parse_size(args.sizes[0])
            lq0 = torch.rand(1, 3, first[0] // 4, first[1] // 4, device=dev)
            gen.compile = True
            weights = next(gen.unet.parameters()).dtype
            start = time.perf_counter()
            run({"size": f"{first[1]}x{first[0]}", "dtype": "bfloat16 weights" if weights == torch.bfloat16
                 else "bfloat16", "merged_lora": True, "tiling": "never", "compile": True},
                lq0.to(weights), torch.bfloat16 if weights == torch.float32 else torch.float32)
            rows[-1]["warmup_and_compile_s"] = round(time.perf_counter() - start, 1)
        gen.merge_lora = False
    device = (torch.cuda.get_device_name() if cuda
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    print(json.dumps({"results": rows, "device": device, "torch": torch.__version__,
                      "process_peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}))


if __name__ == "__main__":
    main()
