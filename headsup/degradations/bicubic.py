"""Bicubic x`scale` downscaling with optional Gaussian noise and JPEG.

The simple degradation of classical SR benchmarks (antialiased bicubic, as
MATLAB's imresize), with the two most common real-world additions. It is the
foundation's stand-in for the Real-ESRGAN second-order model, and it plugs
into the same slot of the DataModule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from headsup.degradations import functional as Fd
from headsup.degradations.base import Degradation, bernoulli, quantize, uniform


class BicubicDegradation(Degradation):
    """Antialiased bicubic downscaling, then optional noise, then optional JPEG.

    Args:
        scale: Downscaling factor.
        noise_prob: Probability that a sample gets additive Gaussian noise.
        noise_sigma: Range of the noise standard deviation, in 8-bit levels (0-255).
        jpeg_prob: Probability that a sample is JPEG-compressed.
        jpeg_quality: Range of JPEG quality factors.
    """

    def __init__(
        self,
        scale: int = 4,
        noise_prob: float = 0.0,
        noise_sigma: tuple[float, float] = (1.0, 10.0),
        jpeg_prob: float = 0.0,
        jpeg_quality: tuple[float, float] = (60.0, 95.0),
    ) -> None:
        super().__init__(scale)
        self.noise_prob = noise_prob
        self.noise_sigma = tuple(noise_sigma)
        self.jpeg_prob = jpeg_prob
        self.jpeg_quality = tuple(jpeg_quality)

    def sample(self, batch_size, generator=None, device=None):
        gen_device = generator.device if generator is not None else "cpu"
        return {
            "noise": bernoulli(self.noise_prob, batch_size, generator, device),
            "sigma": uniform(*self.noise_sigma, batch_size, generator, device) / 255.0,
            # one noise seed per sample so the noise field itself is a parameter
            "noise_seed": torch.randint(0, 2**31 - 1, (batch_size,), generator=generator, device=gen_device).to(
                device
            ),
            "jpeg": bernoulli(self.jpeg_prob, batch_size, generator, device),
            "quality": uniform(*self.jpeg_quality, batch_size, generator, device).round(),
        }

    def forward(self, hq, params):
        b, _, h, w = hq.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"HQ size {h}x{w} is not divisible by scale {self.scale}")
        lq = F.interpolate(hq, size=(h // self.scale, w // self.scale), mode="bicubic", antialias=True)
        lq = lq.clamp(0, 1)
        noisy = params["noise"].to(hq.device)
        if bool(noisy.any()):
            noise = torch.stack(
                [
                    torch.randn(
                        lq.shape[1:], generator=torch.Generator().manual_seed(int(s)), dtype=torch.float32
                    )
                    for s in params["noise_seed"]
                ]
            ).to(lq)
            sigma = (params["sigma"].to(lq) * noisy.to(lq)).view(b, 1, 1, 1)
            lq = (lq + noise * sigma).clamp(0, 1)
        compress = params["jpeg"].to(hq.device)
        if bool(compress.any()):
            idx = compress.nonzero().flatten()
            lq = lq.index_copy(0, idx, Fd.jpeg(lq[idx], params["quality"][idx]).to(lq.dtype))
        return quantize(lq)
