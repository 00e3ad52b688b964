"""Real-ESRGAN's second-order degradation model, batched on the batch's device.

    stage 1: blur (k1) -> random resize -> Gaussian or Poisson noise -> JPEG
    stage 2: blur (k2, with probability) -> random resize -> noise -> JPEG / resize + sinc,
             in random order: [resize to target, sinc, JPEG] or [JPEG, resize to target, sinc]
    output quantised to 8 bits

(Wang et al., Real-ESRGAN, ICCVW 2021, Sec. 3; defaults are those of RealESRGAN_x4plus
training.) Parameters are drawn per sample; the resize scales and modes and the order of
the final step are drawn once per batch, since one interpolation call must share them.
Samples that share a `seed` form one such batch group and get their noise from one
generator seeded with it: fixed parameters give the exact same LQ, and evaluation sets
(one seed per image) give each image an LQ that does not depend on its batch.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from headsup.degradations import functional as Fd
from headsup.degradations import kernels as K
from headsup.degradations.base import Degradation, bernoulli, quantize, uniform

MODES = ("area", "bilinear", "bicubic")


class RealESRGANDegradation(Degradation):
    """Second-order blur/resize/noise/JPEG degradation with per-sample parameters.

    Args:
        scale: HQ/LQ size ratio of the output.
        kernel_range: Smallest and largest (odd) blur kernel size.
        kernel_prob: Probabilities of iso, aniso, generalized iso/aniso, plateau iso/aniso kernels (stage 1).
        blur_sigma: Range of the Gaussian kernel sigmas (stage 1).
        betag_range: Shape range of generalized Gaussian kernels (stage 1).
        betap_range: Shape range of plateau kernels (stage 1).
        sinc_prob: Probability of a sinc kernel instead (stage 1).
        resize_prob: Probabilities of up / down / keep (stage 1).
        resize_range: Scale range of the random resize (stage 1).
        gaussian_noise_prob: Probability of Gaussian (else Poisson) noise (stage 1).
        noise_range: Gaussian noise sigma range in 8-bit levels (stage 1).
        poisson_scale_range: Poisson noise scale range (stage 1).
        gray_noise_prob: Probability that noise is the same on all channels (stage 1).
        jpeg_range: JPEG quality range (stage 1).
        second_blur_prob: Probability of the stage-2 blur.
        kernel_prob2: As kernel_prob, stage 2.
        blur_sigma2: As blur_sigma, stage 2.
        betag_range2: As betag_range, stage 2.
        betap_range2: As betap_range, stage 2.
        sinc_prob2: As sinc_prob, stage 2.
        resize_prob2: As resize_prob, stage 2.
        resize_range2: As resize_range, stage 2.
        gaussian_noise_prob2: As gaussian_noise_prob, stage 2.
        noise_range2: As noise_range, stage 2.
        poisson_scale_range2: As poisson_scale_range, stage 2.
        gray_noise_prob2: As gray_noise_prob, stage 2.
        jpeg_range2: JPEG quality range of the final compression.
        final_sinc_prob: Probability of the final sinc filter (else identity).
        jpeg_backend: "kornia" (differentiable codec, batched) or "libjpeg" (the real codec via
            torchvision, integer quality; faster on CPU).
    """

    def __init__(
        self,
        scale: int = 4,
        kernel_range: tuple[int, int] = (7, 21),
        kernel_prob: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        blur_sigma: tuple[float, float] = (0.2, 3.0),
        betag_range: tuple[float, float] = (0.5, 4.0),
        betap_range: tuple[float, float] = (1.0, 2.0),
        sinc_prob: float = 0.1,
        resize_prob: tuple[float, float, float] = (0.2, 0.7, 0.1),
        resize_range: tuple[float, float] = (0.15, 1.5),
        gaussian_noise_prob: float = 0.5,
        noise_range: tuple[float, float] = (1.0, 30.0),
        poisson_scale_range: tuple[float, float] = (0.05, 3.0),
        gray_noise_prob: float = 0.4,
        jpeg_range: tuple[float, float] = (30.0, 95.0),
        second_blur_prob: float = 0.8,
        kernel_prob2: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03),
        blur_sigma2: tuple[float, float] = (0.2, 1.5),
        betag_range2: tuple[float, float] = (0.5, 4.0),
        betap_range2: tuple[float, float] = (1.0, 2.0),
        sinc_prob2: float = 0.1,
        resize_prob2: tuple[float, float, float] = (0.3, 0.4, 0.3),
        resize_range2: tuple[float, float] = (0.3, 1.2),
        gaussian_noise_prob2: float = 0.5,
        noise_range2: tuple[float, float] = (1.0, 25.0),
        poisson_scale_range2: tuple[float, float] = (0.05, 2.5),
        gray_noise_prob2: float = 0.4,
        jpeg_range2: tuple[float, float] = (30.0, 95.0),
        final_sinc_prob: float = 0.8,
        jpeg_backend: Literal["kornia", "libjpeg"] = "kornia",
    ) -> None:
        super().__init__(scale)
        lo, hi = kernel_range
        if lo % 2 != 1 or hi % 2 != 1 or not 1 <= lo <= hi <= K.GRID:
            raise ValueError(f"kernel_range must be odd sizes within [1, {K.GRID}], got {kernel_range}")
        for name, probs, n in (("kernel_prob", kernel_prob, 6), ("kernel_prob2", kernel_prob2, 6),
                               ("resize_prob", resize_prob, 3), ("resize_prob2", resize_prob2, 3)):
            if len(probs) != n or abs(sum(probs) - 1) > 1e-6:
                raise ValueError(f"{name} must be {n} probabilities summing to 1, got {probs}")
        self.kernel_sizes = torch.arange(lo, hi + 1, 2)
        self.stages = (
            dict(kernel_prob=kernel_prob, blur_sigma=blur_sigma, betag=betag_range, betap=betap_range,
                 sinc_prob=sinc_prob, resize_prob=resize_prob, resize_range=resize_range,
                 gaussian_prob=gaussian_noise_prob, noise_range=noise_range, poisson_range=poisson_scale_range,
                 gray_prob=gray_noise_prob, blur_prob=1.0),
            dict(kernel_prob=kernel_prob2, blur_sigma=blur_sigma2, betag=betag_range2, betap=betap_range2,
                 sinc_prob=sinc_prob2, resize_prob=resize_prob2, resize_range=resize_range2,
                 gaussian_prob=gaussian_noise_prob2, noise_range=noise_range2, poisson_range=poisson_scale_range2,
                 gray_prob=gray_noise_prob2, blur_prob=second_blur_prob),
        )
        self.jpeg_range = jpeg_range
        self.jpeg_range2 = jpeg_range2
        self.final_sinc_prob = final_sinc_prob
        self.jpeg_backend = jpeg_backend

    # ------------------------------------------------------------------ sampling
    def _choice(self, probs, n: int, gen) -> torch.Tensor:
        weights = torch.tensor(probs, dtype=torch.float64)
        gen_device = gen.device if gen is not None else "cpu"
        return torch.multinomial(weights.to(gen_device), n, replacement=True, generator=gen)

    def _kernel_params(self, cfg: dict, n: int, gen, device) -> dict[str, torch.Tensor]:
        size_idx = self._choice([1.0] * len(self.kernel_sizes), n, gen).cpu()
        ksize = self.kernel_sizes[size_idx].to(device)
        kind = self._choice(cfg["kernel_prob"], n, gen).to(device)
        sinc = bernoulli(cfg["sinc_prob"], n, gen, device)
        low_cut = torch.where(ksize < 13, math.pi / 3, math.pi / 5)
        cutoff = low_cut + uniform(0, 1, n, gen, device) * (math.pi - low_cut)
        sx = uniform(*cfg["blur_sigma"], n, gen, device)
        sy = uniform(*cfg["blur_sigma"], n, gen, device)
        theta = uniform(-math.pi, math.pi, n, gen, device)
        iso = kind % 2 == 0
        sy = torch.where(iso, sx, sy)
        theta = torch.where(iso, torch.zeros_like(theta), theta)
        below = bernoulli(0.5, n, gen, device)
        u = uniform(0, 1, n, gen, device)
        plateau = kind >= 4
        b_lo = torch.where(plateau, cfg["betap"][0], cfg["betag"][0])
        b_hi = torch.where(plateau, cfg["betap"][1], cfg["betag"][1])
        beta = torch.where(below, b_lo + u * (1 - b_lo), 1 + u * (b_hi - 1))
        kind = torch.where(sinc, torch.full_like(kind, K.SINC), kind)
        blur = bernoulli(cfg["blur_prob"], n, gen, device)
        return dict(kind=kind, ksize=ksize, sigma_x=sx, sigma_y=sy, theta=theta, beta=beta, cutoff=cutoff, blur=blur)

    def _resize_params(self, cfg: dict, n: int, gen, device) -> dict[str, torch.Tensor]:
        updown = int(self._choice(cfg["resize_prob"], 1, gen))
        lo, hi = cfg["resize_range"]
        bounds = ((1.0, hi), (lo, 1.0), (1.0, 1.0))[updown]
        scale = float(uniform(*bounds, 1, gen, "cpu"))
        mode = int(self._choice([1.0] * len(MODES), 1, gen))
        return dict(resize=torch.full((n,), scale, device=device), mode=torch.full((n,), mode, device=device))

    def _noise_params(self, cfg: dict, n: int, gen, device) -> dict[str, torch.Tensor]:
        return dict(
            gaussian=bernoulli(cfg["gaussian_prob"], n, gen, device),
            sigma=uniform(*cfg["noise_range"], n, gen, device) / 255.0,
            poisson=uniform(*cfg["poisson_range"], n, gen, device),
            gray=bernoulli(cfg["gray_prob"], n, gen, device),
        )

    def sample(self, batch_size, generator=None, device=None):
        device = device if device is not None else "cpu"
        gen_device = generator.device if generator is not None else "cpu"
        params: dict[str, torch.Tensor] = {}
        for s, cfg in enumerate(self.stages, start=1):
            for part in (self._kernel_params, self._resize_params, self._noise_params):
                params.update({f"{k}{s}": v for k, v in part(cfg, batch_size, generator, device).items()})
        params["jpeg1"] = uniform(*self.jpeg_range, batch_size, generator, device)
        params["jpeg2"] = uniform(*self.jpeg_range2, batch_size, generator, device)
        final_ksize = self.kernel_sizes[self._choice([1.0] * len(self.kernel_sizes), batch_size, generator).cpu()]
        final_cut = uniform(math.pi / 3, math.pi, batch_size, generator, device)
        params.update(final_ksize=final_ksize.to(device), final_cutoff=final_cut,
                      final_sinc=bernoulli(self.final_sinc_prob, batch_size, generator, device))
        params["final_mode"] = torch.full((batch_size,), int(self._choice([1.0] * 3, 1, generator)), device=device)
        params["final_order"] = bernoulli(0.5, 1, generator, device).expand(batch_size).clone()
        seed = torch.randint(0, 2**62, (1,), generator=generator, device=gen_device)
        params["seed"] = seed.to(device).expand(batch_size).clone()
        return params

    # ------------------------------------------------------------------ applying
    def _kernels(self, p: dict, s: int) -> torch.Tensor:
        k = K.mixed(p[f"kind{s}"], p[f"ksize{s}"], p[f"sigma_x{s}"], p[f"sigma_y{s}"], p[f"theta{s}"],
                    p[f"beta{s}"], p[f"cutoff{s}"])
        return k

    def _final_kernels(self, p: dict, dtype) -> torch.Tensor:
        return K.sinc(p["final_cutoff"].double(), p["final_ksize"]).to(dtype)

    def _noise(self, x: torch.Tensor, p: dict, s: int, gen: torch.Generator) -> torch.Tensor:
        out = x.clone()
        gauss = p[f"gaussian{s}"]
        for is_gauss in (True, False):
            idx = (gauss == is_gauss).nonzero().flatten()
            if idx.numel() == 0:
                continue
            if is_gauss:
                out[idx] = Fd.gaussian_noise(x[idx], p[f"sigma{s}"][idx], p[f"gray{s}"][idx], gen)
            else:
                out[idx] = Fd.poisson_noise(x[idx], p[f"poisson{s}"][idx], p[f"gray{s}"][idx], gen)
        return out.clamp(0, 1)

    def _apply_group(self, x: torch.Tensor, p: dict, trace: dict | None = None) -> torch.Tensor:
        _, _, h, w = x.shape
        gen = torch.Generator(device=x.device).manual_seed(int(p["seed"][0]))
        # stage 1
        x = Fd.blur(x, self._kernels(p, 1), p["blur1"])
        x = Fd.resize(x, Fd.scaled_size(h, w, float(p["resize1"][0])), MODES[int(p["mode1"][0])])
        x = self._noise(x, p, 1, gen)
        x = Fd.jpeg(x, p["jpeg1"], self.jpeg_backend)
        if trace is not None:
            trace["stage1"] = x
        # stage 2
        x = Fd.blur(x, self._kernels(p, 2), p["blur2"])
        r2 = float(p["resize2"][0])
        x = Fd.resize(x, (max(1, int(h / self.scale * r2)), max(1, int(w / self.scale * r2))),
                      MODES[int(p["mode2"][0])])
        x = self._noise(x, p, 2, gen)
        if trace is not None:
            trace["stage2"] = x
        # final: resize to the target size + sinc, and JPEG, in random order
        target, mode = (h // self.scale, w // self.scale), MODES[int(p["final_mode"][0])]
        sinc = self._final_kernels(p, x.dtype)
        if bool(p["final_order"][0]):
            x = Fd.blur(Fd.resize(x, target, mode), sinc, p["final_sinc"])
            x = Fd.jpeg(x, p["jpeg2"], self.jpeg_backend)
        else:
            x = Fd.jpeg(x, p["jpeg2"], self.jpeg_backend)
            x = Fd.blur(Fd.resize(x, target, mode), sinc, p["final_sinc"])
        return quantize(x)

    def forward(self, hq: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        b, _, h, w = hq.shape
        if h % self.scale or w % self.scale:
            raise ValueError(f"HQ size {h}x{w} is not divisible by scale {self.scale}")
        with torch.autocast(device_type=hq.device.type, enabled=False):
            x = hq.float()
            seeds = params["seed"]
            groups = torch.unique(seeds, sorted=False)
            if groups.numel() == 1:
                return self._apply_group(x, params)
            out = x.new_empty(b, x.shape[1], h // self.scale, w // self.scale)
            for seed in groups:
                idx = (seeds == seed).nonzero().flatten()
                out[idx] = self._apply_group(x[idx], {k: v[idx] for k, v in params.items()})
            return out

    def trace(self, hq: torch.Tensor, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch after stage 1 (blur, resize, noise, JPEG), after stage 2 (before the final
        resize, sinc and JPEG) and at the end (`forward`'s output), for one seed group (the params
        of one `sample` call). Intermediate sizes differ: each stage resizes."""
        if torch.unique(params["seed"]).numel() != 1:
            raise ValueError("trace() takes the params of one sample() call (one seed group)")
        trace: dict[str, torch.Tensor] = {}
        with torch.autocast(device_type=hq.device.type, enabled=False):
            trace["final"] = self._apply_group(hq.float(), params, trace)
        return trace
