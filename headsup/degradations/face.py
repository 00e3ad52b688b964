"""The milder one-stage degradation of blind face restoration (GFPGAN/CodeFormer style).

    y = JPEG_q( (k_sigma * x) downsampled by r  + n_delta ),  then resized to the LQ size

with a Gaussian kernel k (isotropic or anisotropic, 41x41), downsampling factor r,
Gaussian noise n and JPEG quality q drawn per sample (Wang et al., GFPGAN, CVPR 2021,
Sec. 4.1; the ranges here follow the issue's preset: sigma 1-15, r 1-30, noise 0-20,
quality 30-100). The last resize brings every sample to HQ / scale, so the output is an
SR input like the Real-ESRGAN pipeline's.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from headsup.degradations import functional as Fd
from headsup.degradations import kernels as K
from headsup.degradations.base import Degradation, bernoulli, quantize, uniform


class FaceDegradation(Degradation):
    """Blur, downsample, noise and JPEG with per-sample parameters, then resize to HQ / scale.

    Args:
        scale: HQ/LQ size ratio of the output.
        kernel_size: Blur kernel size (odd).
        aniso_prob: Probability of an anisotropic (rotated) kernel instead of an isotropic one.
        blur_sigma: Range of the kernel sigmas.
        downsample_range: Range of the intermediate downsampling factor.
        noise_range: Gaussian noise sigma range in 8-bit levels.
        jpeg_range: JPEG quality range.
        jpeg_backend: "kornia" or "libjpeg" (see functional.jpeg).
    """

    def __init__(
        self,
        scale: int = 4,
        kernel_size: int = 41,
        aniso_prob: float = 0.5,
        blur_sigma: tuple[float, float] = (1.0, 15.0),
        downsample_range: tuple[float, float] = (1.0, 30.0),
        noise_range: tuple[float, float] = (0.0, 20.0),
        jpeg_range: tuple[float, float] = (30.0, 100.0),
        jpeg_backend: Literal["kornia", "libjpeg"] = "kornia",
    ) -> None:
        super().__init__(scale)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        self.kernel_size = kernel_size
        self.aniso_prob = aniso_prob
        self.blur_sigma = tuple(blur_sigma)
        self.downsample_range = tuple(downsample_range)
        self.noise_range = tuple(noise_range)
        self.jpeg_range = tuple(jpeg_range)
        self.jpeg_backend = jpeg_backend

    def sample(self, batch_size, generator=None, device=None):
        device = device if device is not None else "cpu"
        gen_device = generator.device if generator is not None else "cpu"
        aniso = bernoulli(self.aniso_prob, batch_size, generator, device)
        sx = uniform(*self.blur_sigma, batch_size, generator, device)
        sy = uniform(*self.blur_sigma, batch_size, generator, device)
        theta = uniform(-math.pi, math.pi, batch_size, generator, device)
        return {
            "sigma_x": sx,
            "sigma_y": torch.where(aniso, sy, sx),
            "theta": torch.where(aniso, theta, torch.zeros_like(theta)),
            "downsample": uniform(*self.downsample_range, batch_size, generator, device),
            "sigma": uniform(*self.noise_range, batch_size, generator, device) / 255.0,
            "quality": uniform(*self.jpeg_range, batch_size, generator, device),
            "seed": torch.randint(0, 2**62, (batch_size,), generator=generator, device=gen_device).to(device),
        }

    def forward(self, hq: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        b, _, h, w = hq.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"HQ size {h}x{w} is not divisible by scale {self.scale}")
        with torch.autocast(device_type=hq.device.type, enabled=False):
            kernels = K.gaussian(params["sigma_x"].double(), params["sigma_y"].double(), params["theta"].double(),
                                 size=self.kernel_size)
            x = Fd.blur(hq.float(), kernels.float())
            out = []
            for i in range(b):  # each sample has its own intermediate size
                gen = torch.Generator(device=hq.device).manual_seed(int(params["seed"][i]))
                small = Fd.resize(x[i : i + 1], Fd.scaled_size(h, w, 1.0 / float(params["downsample"][i])),
                                  "bilinear")
                small = Fd.gaussian_noise(small, params["sigma"][i : i + 1], torch.zeros(1, dtype=torch.bool,
                                          device=hq.device), gen).clamp(0, 1)
                small = Fd.jpeg(small, params["quality"][i : i + 1], self.jpeg_backend)
                out.append(Fd.resize(small, (h // self.scale, w // self.scale), "bilinear"))
            return quantize(torch.cat(out))
