"""Latency of one-step SR at SD 2.1-base size: fp32 vs bf16, unmerged vs merged LoRA, same run.

The generator is `OneStepSR` built from the SD 2.1-base UNet/VAE configs with random weights
(speed does not depend on weight values) and the default LoRA (rank 4). One call = bicubic
upsampling, VAE encode, one UNet call, VAE decode, for an LQ of output/4.

    python benchmarks/inference_latency.py [--sizes 512] [--device cpu|cuda] [--repeats 2]

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
    args = parser.parse_args()
    from headsup.models.backbone import FromConfig
    from headsup.models.generator import OneStepSR

    dev = torch.device(args.device)
    torch.manual_seed(0)
    gen = OneStepSR(FromConfig()).eval().to(dev)
    rows = []
    for size in args.sizes:
        lq = torch.rand(1, 3, size // 4, size // 4, device=dev)
        for dtype in (torch.float32, torch.bfloat16):
            for merged in (False, True):
                gen.merge_lora = merged
                if dev.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                times = []
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
                assert out.shape[-1] == size
                row = {"size": size, "dtype": str(dtype).removeprefix("torch."), "merged_lora": merged,
                       "seconds": round(min(times), 3)}
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
