"""Images/s of the batched Real-ESRGAN degradation vs the per-image pipeline of dataset workers.

The reference is the same recipe the way BasicSR/Real-ESRGAN/OSEDiff datasets run it on the
CPU, one image at a time: basicsr's numpy kernel synthesis (random_mixed_kernels,
circular_lowpass_kernel), OpenCV filtering and resizing, basicsr's numpy noise and OpenCV
JPEG. Both run on the same images in the same process.

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
import sys
import time

import cv2
import numpy as np
import torch
import torchvision.transforms._functional_tensor as _ft

sys.modules.setdefault("torchvision.transforms.functional_tensor", _ft)  # basicsr 1.4.2 imports the old name

from basicsr.data.degradations import (  # noqa: E402
    add_jpg_compression,
    circular_lowpass_kernel,
    random_add_gaussian_noise,
    random_add_poisson_noise,
    random_mixed_kernels,
)
from skimage.data import astronaut, chelsea, coffee, rocket  # noqa: E402

from headsup.degradations import RealESRGANDegradation  # noqa: E402

KERNEL_LIST = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
CV_MODES = [cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC]


def _kernel(sigma, sinc_prob=0.1, betag=(0.5, 4), betap=(1, 2)):
    size = random.choice([7, 9, 11, 13, 15, 17, 19, 21])
    if np.random.uniform() < sinc_prob:
        omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
        k = circular_lowpass_kernel(omega, size, pad_to=False)
    else:
        k = random_mixed_kernels(KERNEL_LIST, KERNEL_PROB, size, sigma, sigma, [-math.pi, math.pi], betag, betap,
                                 noise_range=None)
    pad = (21 - size) // 2
    return np.pad(k, ((pad, pad), (pad, pad)))


def _resize(img, probs, rng, shape=None):
    h, w = img.shape[:2]
    kind = random.choices(["up", "down", "keep"], probs)[0]
    s = np.random.uniform(1, rng[1]) if kind == "up" else np.random.uniform(rng[0], 1) if kind == "down" else 1
    if shape is not None:
        h, w = shape
    return cv2.resize(img, (max(1, int(w * s)), max(1, int(h * s))), interpolation=random.choice(CV_MODES))


def _noise(img, sigma, pscale):
    if np.random.uniform() < 0.5:
        return random_add_gaussian_noise(img, sigma_range=sigma, gray_prob=0.4, clip=True, rounds=False)
    return random_add_poisson_noise(img, scale_range=pscale, gray_prob=0.4, clip=True, rounds=False)


def reference_one(img: np.ndarray, scale: int = 4) -> np.ndarray:
    """Real-ESRGAN's second-order recipe on one float32 HxWx3 image in [0, 1], numpy/OpenCV."""
    h, w = img.shape[:2]
    out = cv2.filter2D(img, -1, _kernel((0.2, 3)), borderType=cv2.BORDER_REFLECT_101)
    out = _resize(out, [0.2, 0.7, 0.1], [0.15, 1.5])
    out = _noise(out, (1, 30), (0.05, 3))
    out = add_jpg_compression(np.clip(out, 0, 1), quality=int(np.random.uniform(30, 95)))
    if np.random.uniform() < 0.8:
        out = cv2.filter2D(out, -1, _kernel((0.2, 1.5)), borderType=cv2.BORDER_REFLECT_101)
    out = _resize(out, [0.3, 0.4, 0.3], [0.3, 1.2], shape=(h // scale, w // scale))
    out = _noise(out, (1, 25), (0.05, 2.5))
    sinc = circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), random.choice(range(7, 22, 2)), pad_to=21)
    target = (w // scale, h // scale)
    if np.random.uniform() < 0.5:
        out = cv2.resize(out, target, interpolation=random.choice(CV_MODES))
        out = cv2.filter2D(out, -1, sinc, borderType=cv2.BORDER_REFLECT_101)
        out = add_jpg_compression(np.clip(out, 0, 1), quality=int(np.random.uniform(30, 95)))
    else:
        out = add_jpg_compression(np.clip(out, 0, 1), quality=int(np.random.uniform(30, 95)))
        out = cv2.resize(out, target, interpolation=random.choice(CV_MODES))
        out = cv2.filter2D(out, -1, sinc, borderType=cv2.BORDER_REFLECT_101)
    return np.clip((out * 255).round() / 255, 0, 1)


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

    def reference_pass():
        random.seed(0)
        np.random.seed(0)
        for img in ref_images:
            reference_one(img)

    batched_pass()  # warm-up (kernels, allocator, JPEG tables)
    reference_one(images[0])
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
