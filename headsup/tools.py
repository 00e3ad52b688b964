"""headsup-tools: data and model utilities that are not training runs.

    headsup-tools samples OUT          real photos shipped in installed packages -> train/test folders
    headsup-tools tiny-backbone IMAGES OUT
                                       pretrain the tiny SD stand-in, save it as a diffusers folder
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

# name -> (loader module, attribute or file); split decides where each goes.
TEST_PORTRAIT = ["astronaut", "grace_hopper"]
TEST_GENERAL = ["chelsea", "coffee"]
TRAIN = [
    "camera", "rocket", "hubble_deep_field", "retina", "brick", "grass", "gravel", "moon", "coins",
    "immunohistochemistry", "colorwheel", "cell", "clock", "page", "text", "china", "flower",
]  # fmt: skip


# small real inputs for `predict` (the photo downscaled x4): a portrait, a grayscale and an RGBA image
PREDICT = ["astronaut", "grace_hopper", "camera", "logo"]


def _load_sample(name: str) -> np.ndarray:
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            return np.asarray(Image.open(handle).convert("RGB"))
    import skimage.data

    return getattr(skimage.data, name)()


def write_samples(out: str | Path, overwrite: bool = False) -> dict[str, list[Path]]:
    """Write the package-shipped photos as PNGs into OUT/train, OUT/test/portrait, OUT/test/general,
    and small (x4 downscaled) inputs for `predict` into OUT/predict.

    Existing files are kept unless `overwrite`. Grayscale photos stay grayscale.
    """
    from PIL import Image

    out = Path(out)
    layout = {"train": TRAIN, "test/portrait": TEST_PORTRAIT, "test/general": TEST_GENERAL}
    written: dict[str, list[Path]] = {}
    for split, names in layout.items():
        for name in names:
            path = out / split / f"{name}.png"
            written.setdefault(split, []).append(path)
            if path.exists() and not overwrite:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(_load_sample(name))).save(path)
    for name in PREDICT:
        path = out / "predict" / f"{name}.png"
        written.setdefault("predict", []).append(path)
        if path.exists() and not overwrite:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(np.ascontiguousarray(_load_sample(name)))
        img.resize((img.width // 4, img.height // 4), Image.Resampling.BICUBIC, reducing_gap=3.0).save(path)
    return written


def _cmd_samples(args: argparse.Namespace) -> int:
    written = write_samples(args.out, overwrite=args.overwrite)
    for split, paths in written.items():
        print(f"{split}: {len(paths)} images in {Path(args.out) / split}")
    return 0


def _cmd_tiny_backbone(args: argparse.Namespace) -> int:
    import torch

    from headsup.testing.tiny import pretrain_tiny_backbone

    out = Path(args.out)
    if (out / "unet").exists() and not args.overwrite:
        print(f"{out} already holds a backbone; keeping it (--overwrite to rebuild)")
        return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pretrain_tiny_backbone(args.images, out, vae_steps=args.vae_steps, unet_steps=args.unet_steps, seed=args.seed)
    print(f"tiny backbone written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="headsup-tools", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("samples", help="write real sample photos shipped in installed packages")
    p.add_argument("out", help="output folder")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_samples)
    p = sub.add_parser("tiny-backbone", help="pretrain the tiny SD stand-in and save it as a diffusers folder")
    p.add_argument("images", help="folder of training photos")
    p.add_argument("out", help="output diffusers folder")
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--unet-steps", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_tiny_backbone)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"headsup-tools {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
