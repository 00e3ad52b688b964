"""Throughput of a `headsup test` sweep per metric group: images/s of SR and of each metric.

Runs the pieces `headsup test` runs, in one process, on the same images: the tiny generator
(random weights; speed does not depend on them), then each metric group on its SR outputs.
LPIPS, facenet and NIQE use stand-in weight files (`headsup-tools tiny-weights`, a NIQE
parameter file of the right shape): their speed is that of the real networks.

    python benchmarks/sweep_throughput.py [--images 16] [--size 256] [--device cpu]

The last output line is one JSON object (images/s per group).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def _photos(n: int, size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """HQ crops of the two package portraits (faces inside), their landmarks and validity."""
    from matplotlib import cbook
    from PIL import Image
    from skimage.data import astronaut

    from headsup.data.faces import FaceAnnotator

    with cbook.get_sample_data("grace_hopper.jpg") as handle:
        hopper = np.asarray(Image.open(handle).convert("RGB"))
    crops = []
    for img in (astronaut(), hopper):
        t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255
        t = F.interpolate(t[None], size=(size, size), mode="bicubic", antialias=True, align_corners=False)[0]
        crops.append(t.clamp(0, 1))
    hq = torch.stack([crops[i % 2] for i in range(n)])
    faces = FaceAnnotator(device="cpu").detect(list(hq[:2]))
    landmarks = torch.stack([torch.tensor(faces[i % 2][0].landmarks) for i in range(n)])[:, None]
    return hq, landmarks, torch.ones(n, 1, dtype=torch.bool)


def _rate(fn, n: int, device: str) -> float:
    fn()  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--size", type=int, default=256, help="HQ side (LQ is a quarter)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import scipy.io

    from headsup.metrics.extra import IdentityCosine, LandmarkDistance, LPIPSMetric, PyiqaMetric
    from headsup.metrics.full_reference import psnr, ssim
    from headsup.metrics.seam import seam_scores
    from headsup.models.generator import OneStepSR
    from headsup.testing.tiny import TinySD, write_tiny_weights

    dev = args.device
    hq, landmarks, valid = _photos(args.images, args.size)
    hq, landmarks, valid = hq.to(dev), landmarks.to(dev), valid.to(dev)
    lq = F.interpolate(hq, scale_factor=0.25, mode="area")
    batch = {"face_landmarks": landmarks, "face_valid": valid}
    torch.manual_seed(0)
    generator = OneStepSR(TinySD()).eval().to(dev)
    with tempfile.TemporaryDirectory() as tmp:
        w = write_tiny_weights(Path(tmp))
        niqe_file = Path(tmp) / "niqe.mat"
        scipy.io.savemat(niqe_file, {"mu_prisparam": np.zeros((1, 36)), "cov_prisparam": np.eye(36)})
        lpips = LPIPSMetric(str(w["vgg"]), str(w["lpips"])).to(dev)
        niqe = PyiqaMetric("niqe", str(niqe_file))
        deg = IdentityCosine(str(w["facenet"])).to(dev)
        lmd = LandmarkDistance()
        with torch.no_grad():
            sr = torch.cat([generator(lq[i : i + 4]) for i in range(0, len(lq), 4)])
            groups = {
                "sr_generation": lambda: [generator(lq[i : i + 4]) for i in range(0, len(lq), 4)],
                "psnr_ssim_y_rgb": lambda: [f(sr, hq, 4, y) for f in (psnr, ssim) for y in (True, False)],
                "seam": lambda: seam_scores(sr, hq, landmarks[:, 0]),
                "lpips": lambda: lpips.scores(sr, hq, batch),
                "niqe": lambda: niqe.scores(sr, None, batch),
                "deg": lambda: deg.scores(sr, hq, batch),
                "lmd": lambda: lmd.scores(sr, hq, batch),
            }
            rates = {}
            for name, fn in groups.items():
                rates[name] = round(_rate(fn, args.images, dev), 2)
                print(f"{name}: {rates[name]} images/s")
    device = (torch.cuda.get_device_name() if dev == "cuda"
              else f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    print(json.dumps({"images_per_s": rates, "images": args.images, "hq_size": args.size, "device": device,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
