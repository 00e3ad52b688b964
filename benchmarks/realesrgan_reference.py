"""Real-ESRGAN's second-order degradation one image at a time, from basicsr 1.4.2's own functions.

The reference that the throughput benchmark and the tests hold headsup's batched
`RealESRGANDegradation` against. The recipe (kernel draws of Real-ESRGAN's
realesrgan_dataset.py, the pipeline of realesrgan_model.py `feed_data`, RealESRGAN_x4plus
settings) is written once, in `reference_one`; one of two operator sets applies it:

    NumpyOps: as dataset workers run it on the CPU: basicsr's numpy noise, OpenCV filtering,
              resizing and JPEG (HxWx3 float32 arrays in [0, 1])
    TorchOps: as `feed_data` runs it: basicsr's filter2D, random_add_*_noise_pt, DiffJPEG and
              F.interpolate ((1, 3, H, W) tensors in [0, 1])

Random draws come from Python's `random`, NumPy's global generator and, for TorchOps' noise,
torch's global generator, as in basicsr: seed all three for a reproducible output.

basicsr is a peer used for comparisons only:
    pip install --no-deps --no-build-isolation basicsr==1.4.2
Release 1.4.2 imports `torchvision.transforms.functional_tensor`, which torchvision has since
renamed; importing this module first aliases the private module under the old name.
"""

from __future__ import annotations

import math
import random
import sys

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms._functional_tensor as _ft

sys.modules.setdefault("torchvision.transforms.functional_tensor", _ft)  # basicsr 1.4.2 imports the old name

from basicsr.data.degradations import (  # noqa: E402
    add_jpg_compression,
    circular_lowpass_kernel,
    random_add_gaussian_noise,
    random_add_gaussian_noise_pt,
    random_add_poisson_noise,
    random_add_poisson_noise_pt,
    random_mixed_kernels,
)
from basicsr.utils import DiffJPEG  # noqa: E402
from basicsr.utils.img_process_util import filter2D  # noqa: E402

KERNEL_LIST = ["iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso"]
KERNEL_PROB = [0.45, 0.25, 0.12, 0.03, 0.12, 0.03]
KERNEL_SIZES = [7, 9, 11, 13, 15, 17, 19, 21]


class NumpyOps:
    """basicsr's numpy noise and OpenCV filter/resize/JPEG on HxWx3 float32 arrays."""

    MODES = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC)

    def size(self, img: np.ndarray) -> tuple[int, int]:
        return img.shape[0], img.shape[1]

    def filter(self, img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        return cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)

    def resize(self, img: np.ndarray, size: tuple[int, int], mode: int) -> np.ndarray:
        return cv2.resize(img, (size[1], size[0]), interpolation=self.MODES[mode])

    def noise(self, img: np.ndarray, gaussian: bool, sigma_range, scale_range, gray_prob: float) -> np.ndarray:
        if gaussian:
            return random_add_gaussian_noise(img, sigma_range=sigma_range, gray_prob=gray_prob, clip=True, rounds=False)
        return random_add_poisson_noise(img, scale_range=scale_range, gray_prob=gray_prob, clip=True, rounds=False)

    def jpeg(self, img: np.ndarray, quality: float) -> np.ndarray:
        return add_jpg_compression(np.clip(img, 0, 1), quality=int(quality))

    def quantize(self, img: np.ndarray) -> np.ndarray:
        return np.clip((img * 255).round() / 255, 0, 1)


class TorchOps:
    """basicsr's filter2D, torch noise and DiffJPEG with F.interpolate, as Real-ESRGAN's `feed_data`."""

    MODES = ("area", "bilinear", "bicubic")

    def __init__(self) -> None:
        self.jpeger = DiffJPEG(differentiable=False)

    def size(self, img: torch.Tensor) -> tuple[int, int]:
        return img.shape[-2], img.shape[-1]

    def filter(self, img: torch.Tensor, kernel: np.ndarray) -> torch.Tensor:
        return filter2D(img, torch.from_numpy(kernel).float()[None])

    def resize(self, img: torch.Tensor, size: tuple[int, int], mode: int) -> torch.Tensor:
        return F.interpolate(img, size=size, mode=self.MODES[mode])

    def noise(self, img: torch.Tensor, gaussian: bool, sigma_range, scale_range, gray_prob: float) -> torch.Tensor:
        if gaussian:
            return random_add_gaussian_noise_pt(img, sigma_range=sigma_range, gray_prob=gray_prob, clip=True,
                                                rounds=False)
        return random_add_poisson_noise_pt(img, scale_range=scale_range, gray_prob=gray_prob, clip=True, rounds=False)

    def jpeg(self, img: torch.Tensor, quality: float) -> torch.Tensor:
        # a fresh tensor each call: DiffJPEG overwrites the quality it is given
        return self.jpeger(img.clamp(0, 1), quality=torch.tensor([quality], dtype=img.dtype))

    def quantize(self, img: torch.Tensor) -> torch.Tensor:
        return torch.clamp((img * 255.0).round(), 0, 255) / 255.0


def _kernel(sigma, sinc_prob: float = 0.1, betag=(0.5, 4), betap=(1, 2)) -> np.ndarray:
    size = random.choice(KERNEL_SIZES)
    if np.random.uniform() < sinc_prob:
        omega = np.random.uniform(np.pi / 3, np.pi) if size < 13 else np.random.uniform(np.pi / 5, np.pi)
        k = circular_lowpass_kernel(omega, size, pad_to=False)
    else:
        k = random_mixed_kernels(KERNEL_LIST, KERNEL_PROB, size, sigma, sigma, [-math.pi, math.pi], betag, betap,
                                 noise_range=None)
    pad = (21 - size) // 2
    return np.pad(k, ((pad, pad), (pad, pad)))


def _random_scale(probs, bounds) -> float:
    kind = random.choices(["up", "down", "keep"], probs)[0]
    if kind == "up":
        return np.random.uniform(1, bounds[1])
    return np.random.uniform(bounds[0], 1) if kind == "down" else 1.0


def reference_one(img, ops, scale: int = 4, final_sinc_prob: float = 0.8):
    """Real-ESRGAN's second-order recipe (RealESRGAN_x4plus settings) on one image.

    Args:
        img: One HQ image in [0, 1], in the format of `ops`.
        ops: `NumpyOps()` or `TorchOps()`.
        scale: HQ/LQ size ratio of the output.
        final_sinc_prob: Probability of the final sinc filter (else none, as Real-ESRGAN's pulse).
    """
    h, w = ops.size(img)
    # stage 1: blur, random resize, noise, JPEG
    out = ops.filter(img, _kernel((0.2, 3)))
    s = _random_scale([0.2, 0.7, 0.1], [0.15, 1.5])
    out = ops.resize(out, (max(1, int(h * s)), max(1, int(w * s))), random.randrange(3))
    out = ops.noise(out, np.random.uniform() < 0.5, (1, 30), (0.05, 3), 0.4)
    out = ops.jpeg(out, np.random.uniform(30, 95))
    # stage 2: blur (p=0.8), random resize relative to the target size, noise
    if np.random.uniform() < 0.8:
        out = ops.filter(out, _kernel((0.2, 1.5)))
    s = _random_scale([0.3, 0.4, 0.3], [0.3, 1.2])
    out = ops.resize(out, (max(1, int(h / scale * s)), max(1, int(w / scale * s))), random.randrange(3))
    out = ops.noise(out, np.random.uniform() < 0.5, (1, 25), (0.05, 2.5), 0.4)
    # final: [resize to target, sinc, JPEG] or [JPEG, resize to target, sinc]
    sinc = None
    if np.random.uniform() < final_sinc_prob:
        sinc = circular_lowpass_kernel(np.random.uniform(np.pi / 3, np.pi), random.choice(KERNEL_SIZES), pad_to=21)
    target, mode = (h // scale, w // scale), random.randrange(3)
    if np.random.uniform() < 0.5:
        out = ops.resize(out, target, mode)
        out = ops.filter(out, sinc) if sinc is not None else out
        out = ops.jpeg(out, np.random.uniform(30, 95))
    else:
        out = ops.jpeg(out, np.random.uniform(30, 95))
        out = ops.resize(out, target, mode)
        out = ops.filter(out, sinc) if sinc is not None else out
    return ops.quantize(out)
