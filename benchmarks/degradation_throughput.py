"""Images/s of the batched Real-ESRGAN degradation vs the per-image pipeline of dataset workers.

The reference is the same recipe the way BasicSR/Real-ESRGAN/OSEDiff datasets run it on the
CPU, one image at a time: basicsr's numpy kernel synthesis (random_mixed_kernels,
circular_lowpass_kernel), OpenCV filtering and resizing, basicsr's numpy noise and OpenCV
JPEG (`realesrgan_reference.reference_one` with `NumpyOps`). Both run on the same images in
the same process.

    python benchmarks/degradation_throughput.py --size 256 [--device cuda] [--batch 16] [--images 64]
        [--jpeg-backend kornia|libjpeg] [--reference-images 64]

basicsr is a benchmark-only peer: pip install --no-deps --no-build-isolation basicsr==1.4.2
The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import time

import cv2
import numpy as np
import torch
from realesrgan_reference import NumpyOps, reference_one  # the sibling module; it makes basicsr importable
from skimage.data import astronaut, chelsea, coffee, rocket

from headsup.degradations import RealESRGANDegradation


def crops(n: int, size: int) -> np.ndarray:
    photos = [astronaut(), chelsea(), coffee(), rocket()]
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        p = photos[i % len(photos)]
        if min(p.shape[:2]) < size:
            p = cv2.resize(p, (max(size, p.shape[1]), max(size, p.shape[0])), interpolation=cv2.INTER_CUBIC)
        y = rng.integers(0, p.shape[0] - size + 1)
        x = rng.integers(0, p.shape[1] - size + 1)
        out.append(p[y : y + size, x : x + size])
    return np.stack(out).astype(np.float32) / 255


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the images (best is kept)")
    parser.add_argument("--reference-images", type=int, default=None,
                        help="images the per-image reference runs on (default --images; its rate is per image)")
    parser.add_argument("--profile", action="store_true", help="print the costliest operators of one batched pass")
    parser.add_argument("--jpeg-backend", default="kornia", choices=["kornia", "libjpeg"])
    args = parser.parse_args()
    device = torch.device(args.device)
    images = crops(args.images, args.size)
    random.seed(0)
    np.random.seed(0)

    deg = RealESRGANDegradation(jpeg_backend=args.jpeg_backend).to(device)
    # contiguous NCHW batches, as the DataModule's collate delivers them
    batches = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().to(device).split(args.batch)
    gen = torch.Generator(device=device).manual_seed(0)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def batched_pass():
        gen.manual_seed(0)  # every pass draws the same parameters
        for hq in batches:
            deg(hq, deg.sample(hq.shape[0], generator=gen, device=device))
        sync()

    ref_images = images[: args.reference_images or args.images]
    ops = NumpyOps()

    def reference_pass():
        random.seed(0)
        np.random.seed(0)
        for img in ref_images:
            reference_one(img, ops)

    batched_pass()  # warm-up (kernels, allocator, JPEG tables)
    reference_one(images[0], ops)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            batched_pass()
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=key, row_limit=25, max_name_column_width=60))
    timings = {}
    for name, fn, count in (("batched", batched_pass, args.images), ("reference", reference_pass, len(ref_images))):
        best = math.inf
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - start)
        timings[name] = count / best
        print(f"{name}: {timings[name]:.1f} images/s ({count} images of {args.size}x{args.size})")

    result = {
        "images_per_s": round(timings["batched"], 1),
        "reference_images_per_s": round(timings["reference"], 1),
        "ratio": round(timings["batched"] / timings["reference"], 2),
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        ),
        "size": args.size,
        "batch": args.batch,
        "jpeg_backend": args.jpeg_backend,
        "images": args.images,
        "reference_images": len(ref_images),
        "reference": "basicsr 1.4.2 numpy kernels/noise + OpenCV filter/resize/JPEG, one image at a time",
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
