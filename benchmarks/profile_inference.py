"""Where the time of one 512x512 SR call goes on a GPU: per stage (CUDA events) and per kernel.

SD 2.1-base-size `OneStepSR` with random weights, the weights in bf16, merged LoRA, untiled.

    python benchmarks/profile_inference.py [--size 512] [--rows 25] [--split-group-norm]
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rows", type=int, default=25)
    parser.add_argument("--split-group-norm", action="store_true", help="the generator's split_group_norm option")
    args = parser.parse_args()
    from headsup.models.backbone import FromConfig
    from headsup.models.generator import OneStepSR

    torch.manual_seed(0)
    gen = OneStepSR(FromConfig(), tiling="never", merge_lora=True, split_group_norm=args.split_group_norm)
    gen = gen.eval().cuda().to(torch.bfloat16)
    lq = torch.rand(1, 3, args.size // 4, args.size // 4, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for _ in range(3):
            gen(lq)
        stages = {"encode": lambda: gen.encode(lq)}
        z = gen.encode(lq)
        stages["unet"] = lambda: gen.denoise(z)
        z0 = gen.denoise(z)
        stages["decode"] = lambda: gen.decode(z0)
        for name, fn in stages.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            fn()
            start.record()
            for _ in range(10):
                fn()
            end.record()
            torch.cuda.synchronize()
            print(f"{name}: {start.elapsed_time(end) / 10:.2f} ms")
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                gen(lq)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=args.rows, max_name_column_width=70))


if __name__ == "__main__":
    main()
