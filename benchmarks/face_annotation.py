"""Faces/s and images/s of the batched face annotator vs one-image-at-a-time MTCNN.

The batched path is `headsup.data.faces.annotate`: DataLoader workers decode and shrink each
image so its longer side is at most --detect-size, the main process detects --batch-size of them
in one MTCNN call and appends JSON Lines records to a fresh manifest. Two references run on the
same files in the same process, one image at a time:

- full resolution, as a naive script does it: PIL open, EXIF transpose,
  `MTCNN(keep_all=True).detect(img, landmarks=True)` on the full-size image;
- shrunk: the annotator's own decode (`read_image`), shrink and detection, one image per call,
  no workers, to separate the gain of detecting on a small copy from that of batching and
  parallel decoding.

The images are real photos shipped in installed packages (scikit-image's astronaut, coffee and
chelsea, matplotlib's grace_hopper), cut to 2:3 portrait windows (shifted, scaled, flipped per
copy), upscaled so the longer side is --long-side and saved as JPEG quality 95 in a temporary
folder. Faces are counted at the annotator's min_prob (0.9) on every path. Each path is timed
over --repeats passes and the best is kept; every batched pass writes a fresh manifest and
includes starting its DataLoader workers. Each detector is warmed up on one image first.

    python benchmarks/face_annotation.py [--images 24] [--long-side 3840] [--batch-size 8]
        [--workers 2] [--detect-size 1024] [--device cpu|cuda] [--repeats 3]

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import matplotlib.cbook
import numpy as np
import torch
from PIL import Image, ImageOps
from skimage.data import astronaut, chelsea, coffee

from headsup.data.faces import FaceAnnotator, annotate, read_manifest
from headsup.data.io import list_images, read_image

MIN_PROB = 0.9  # FaceAnnotator's default; every path counts faces at this probability


def sources() -> list[tuple[str, np.ndarray, bool]]:
    """(name, HxWx3 uint8 photo, has a face): portraits twice as often as no-face photos."""
    grace = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB"))
    return [("astronaut", astronaut(), True), ("grace_hopper", grace, True), ("coffee", coffee(), False),
            ("astronaut", astronaut(), True), ("grace_hopper", grace, True), ("chelsea", chelsea(), False)]


def build_images(folder: Path, count: int, long_side: int) -> dict[str, bool]:
    """Write `count` portrait JPEGs to `folder`; returns {file name: source has a face}."""
    photos = sources()
    out = {}
    for i in range(count):
        name, photo, has_face = photos[i % len(photos)]
        k = i // len(photos)
        h, w = photo.shape[:2]
        scale = (1.0, 0.95, 0.9)[(k // 2) % 3]  # share of the largest 2:3 window kept
        ph = min(h, w * 3 // 2)
        ph, pw = int(ph * scale), int(ph * scale) * 2 // 3
        fx, fy = (0.5, 0.25, 0.75)[k % 3], (0.5, 0.0, 1.0)[(k // 3) % 3]  # faces stay inside for these photos
        x, y = int((w - pw) * fx), int((h - ph) * fy)
        img = Image.fromarray(photo[y : y + ph, x : x + pw])
        if k % 2:
            img = ImageOps.mirror(img)
        img = img.resize((long_side * 2 // 3, long_side), Image.Resampling.LANCZOS)
        file = f"{i:03d}_{name}.jpg"
        img.save(folder / file, quality=95)
        out[file] = has_face
    return out


def count_faces(probs) -> int:
    return sum(1 for p in (probs if probs is not None else []) if p is not None and p >= MIN_PROB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--long-side", type=int, default=3840)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--detect-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes of each path (best is kept)")
    parser.add_argument("--skip-full-reference", action="store_true",
                        help="leave out the full-resolution reference (slow on a CPU at 4K)")
    args = parser.parse_args()
    device = torch.device(args.device)

    from facenet_pytorch import MTCNN

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with tempfile.TemporaryDirectory(prefix="headsup-faces-bench-") as tmp:
        root = Path(tmp) / "images"
        root.mkdir()
        start = time.perf_counter()
        has_face = build_images(root, args.images, args.long_side)
        files = list_images(root)
        print(f"wrote {len(files)} JPEGs of {args.long_side * 2 // 3}x{args.long_side} in "
              f"{time.perf_counter() - start:.1f} s ({sum(has_face.values())} of portraits)")

        annotator = FaceAnnotator(device=device, detect_size=args.detect_size, min_prob=MIN_PROB)
        reference = MTCNN(keep_all=True, device=device)
        counts: dict[str, dict[str, int]] = {f.name: {} for f in files}

        def batched_pass():
            manifest = Path(tmp) / f"faces-{time.time_ns()}.jsonl"  # fresh each pass, outside the image folder
            annotate(root, manifest, annotator=annotator, batch_size=args.batch_size, num_workers=args.workers,
                     progress=False)
            records = read_manifest(manifest)
            assert len(records) == len(files) and not any(r["error"] for r in records), "annotation incomplete"
            for r in records:
                counts[Path(r["path"]).name]["batched"] = len(r["faces"])

        def shrunk_one(f: Path) -> int:
            small, scale = annotator.shrink(read_image(f).rgb)
            return len(annotator.detect([small], [scale])[0])

        def full_one(f: Path) -> int:
            with Image.open(f) as img:
                img = ImageOps.exif_transpose(img).convert("RGB")
            boxes, probs, points = reference.detect(img, landmarks=True)
            return count_faces(probs)

        def shrunk_pass():
            for f in files:
                counts[f.name]["shrunk"] = shrunk_one(f)

        def full_pass():
            for f in files:
                counts[f.name]["full"] = full_one(f)

        # warm-up of each detector on one real image (first-call allocations and kernels)
        annotator.detect([annotator.shrink(read_image(files[0]).rgb)[0]] * min(args.batch_size, len(files)),
                         [1.0] * min(args.batch_size, len(files)))
        shrunk_one(files[0])
        if not args.skip_full_reference:
            full_one(files[0])
        sync()

        passes = {"batched": batched_pass, "shrunk": shrunk_pass}
        if not args.skip_full_reference:
            passes["full"] = full_pass
        timings: dict[str, float] = {}
        for name, fn in passes.items():
            seconds = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                sync()
                seconds.append(time.perf_counter() - start)
            timings[name] = min(seconds)
            print(f"{name}: passes " + ", ".join(f"{t:.2f}" for t in seconds) + f" s (best {min(seconds):.2f} s)",
                  flush=True)

    paths = [p for p in ("batched", "shrunk", "full") if p in timings]
    print("faces (prob >= %.1f) per image: %s" % (MIN_PROB, ", ".join(paths)))
    for name, c in counts.items():
        flag = "" if (min(c.values()) > 0) == has_face[name] else "   <- unexpected"
        print(f"  {name:24s} " + " ".join(f"{c[p]:2d}" for p in paths) + flag)
    totals = {p: sum(c[p] for c in counts.values()) for p in paths}
    portraits = [n for n, f in has_face.items() if f]
    missed = {p: sum(1 for n in portraits if counts[n][p] == 0) for p in paths}
    print("total faces: " + ", ".join(f"{p} {totals[p]}" for p in paths)
          + "; portraits without a face: " + ", ".join(f"{p} {missed[p]}" for p in paths))

    n = len(files)
    rate = {p: n / timings[p] for p in paths}
    face_rate = {p: totals[p] / timings[p] for p in paths}
    for p in paths:
        print(f"{p}: {rate[p]:.2f} images/s, {face_rate[p]:.2f} faces/s")
    full = "full" in rate
    result = {
        "images_per_s": round(rate["batched"], 3),
        "reference_images_per_s": round(rate["full"], 3) if full else None,
        "ratio": round(rate["batched"] / rate["full"], 2) if full else None,
        "faces_per_s": round(face_rate["batched"], 3),
        "reference_faces_per_s": round(face_rate["full"], 3) if full else None,
        "shrunk_reference_images_per_s": round(rate["shrunk"], 3),
        "shrunk_reference_faces_per_s": round(face_rate["shrunk"], 3),
        "ratio_vs_shrunk": round(rate["batched"] / rate["shrunk"], 2),
        "faces": totals["batched"],
        "reference_faces": totals["full"] if full else None,
        "shrunk_reference_faces": totals["shrunk"],
        "device": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        ),
        "images": n,
        "repeats": args.repeats,
        "long_side": args.long_side,
        "detect_size": args.detect_size,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "reference": "facenet-pytorch MTCNN(keep_all=True).detect(PIL image, landmarks=True), "
                     "full resolution, one at a time",
        "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
