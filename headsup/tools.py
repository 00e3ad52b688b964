"""headsup-tools: data and model utilities that are not training runs.

    headsup-tools samples OUT          real photos shipped in installed packages -> train/test folders
    headsup-tools tiny-backbone IMAGES OUT
                                       pretrain the tiny SD stand-in, save it as a diffusers folder
    headsup-tools tiny-weights OUT     random stand-ins of LPIPS/facenet/discriminator weight files (tests, tiny runs)
    headsup-tools enhance INPUT OUTPUT --weights EXPORT_OR_CKPT [--backbone SD] [--scale 4] [--reference REF]
                                       enhance a photo or a folder (needs only the backbone folder)
    headsup-tools export RUN_OR_CKPT OUT [--raw] [--merged] [--format osediff]
                                       LoRA safetensors (diffusers/peft) + conv_in + headsup.json
    headsup-tools import-osediff OSEDIFF_PKL OUT --backbone SD_FOLDER [--prompt P] [--overwrite]
                                       OSEDiff's released osediff.pkl -> a checkpoint for predict/test/enhance
    headsup-tools prepare faces ROOT   MTCNN boxes/landmarks of every image -> ROOT/faces.jsonl (resumable)
    headsup-tools prepare prompts ROOT --captioner FOLDER
                                       a local captioner's text of every image -> <stem>.txt (or --out MAP.jsonl)
    headsup-tools prepare references MANIFEST --weights facenet.pt | --from-folders
                                       identities and same-person reference pairs -> references.jsonl
    headsup-tools prepare portrait-set MANIFEST --out DIR [--references references.jsonl]
                                       PortraitSR-4K filters, identity-disjoint train/test manifests
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


# portraits for tiny face-aware runs, one folder per person (the test portraits: a code-path check only)
PORTRAITS = ["astronaut", "grace_hopper"]

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
    small (x4 downscaled) inputs for `predict` into OUT/predict, and two half-size photos per
    person into OUT/portrait/<person>/ (for tiny face-aware runs; they are the test portraits).

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
    for name in PORTRAITS:
        # two "photos" per person at half size: the portrait and a mirrored, tighter framing
        img = Image.fromarray(np.ascontiguousarray(_load_sample(name)))
        img = img.resize((img.width // 2, img.height // 2), Image.Resampling.LANCZOS)
        w, h = img.size
        mirrored = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT).crop((w // 16, h // 16, w - w // 16, h - h // 16))
        for suffix, photo in (("", img), ("_mirrored", mirrored)):
            path = out / "portrait" / name / f"{name}{suffix}.png"
            written.setdefault("portrait", []).append(path)
            if not path.exists() or overwrite:
                path.parent.mkdir(parents=True, exist_ok=True)
                photo.save(path)
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


def _cmd_tiny_weights(args: argparse.Namespace) -> int:
    from headsup.testing.tiny import write_tiny_weights

    for name, path in write_tiny_weights(args.out).items():
        print(f"{name}: {path}")
    return 0


def _cmd_prepare_faces(args: argparse.Namespace) -> int:
    from headsup.data.faces import FaceAnnotator, annotate, read_manifest

    annotator = FaceAnnotator(device=args.device, detect_size=args.detect_size, min_face_size=args.min_face_size,
                              min_prob=args.min_prob)
    manifest = annotate(args.root, args.manifest, annotator, batch_size=args.batch_size,
                        num_workers=args.workers, retry_errors=args.retry_errors)
    records = read_manifest(manifest)
    errors = sum(1 for r in records if r.get("error"))
    faces = sum(len(r.get("faces", [])) for r in records)
    print(f"{manifest}: {len(records)} images, {faces} faces, {errors} unreadable")
    return 0


def _cmd_prepare_references(args: argparse.Namespace) -> int:
    from headsup.data import curation
    from headsup.data.faces import read_manifest, write_manifest
    from headsup.models.identity import IdentityNet

    manifest = Path(args.manifest)
    out = Path(args.out) if args.out else manifest.parent / "references.jsonl"
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    records = [r for r in read_manifest(manifest) if not r.get("error") and r.get("faces")]
    if args.from_folders:
        identities = curation.folder_identities(records)
    else:
        if args.weights is None:
            raise ValueError("give --weights (InceptionResnetV1 state dict) or --from-folders")
        net = IdentityNet(args.weights, alignment=args.alignment).to(args.device or "cpu")
        embeddings = curation.face_embeddings(records, manifest.parent, net)
        identities = curation.cluster_identities(embeddings, args.threshold)
    pairs = curation.reference_pairs(identities, None if args.from_folders else embeddings, args.threshold)
    write_manifest(out, [{"path": p, "identity": identities[p], "references": pairs[p]} for p in sorted(identities)])
    with_refs = sum(1 for p in pairs.values() if p)
    print(f"{out}: {len(identities)} images, {len(set(identities.values()))} identities, "
          f"{with_refs} with at least one reference")
    return 0


def _cmd_prepare_portrait_set(args: argparse.Namespace) -> int:
    from headsup.data.curation import PortraitFilter, build_portrait_set

    flt = PortraitFilter(min_long_side=args.min_long_side, min_short_side=args.min_short_side,
                         aspect_range=tuple(args.aspect_range), min_eye_distance=args.min_eye_distance,
                         min_sharpness=args.min_sharpness, iqa_metric=args.iqa_metric,
                         iqa_weights=args.iqa_weights, min_iqa=args.min_iqa)
    counts = build_portrait_set(args.manifest, args.out, flt, references=args.references,
                                test_fraction=args.test_fraction, seed=args.seed, overwrite=args.overwrite,
                                device=args.device or "cpu")
    print(f"{args.out}: {counts['train']} train, {counts['test']} test, {counts['rejected']} rejected "
          f"(reasons in rejected.jsonl)")
    return 0


def _cmd_prepare_prompts(args: argparse.Namespace) -> int:
    from headsup.data.tagging import write_prompts

    done = write_prompts(args.root, args.captioner, out=args.out, batch_size=args.batch_size,
                         max_new_tokens=args.max_new_tokens, device=args.device, overwrite=args.overwrite)
    where = args.out or "<stem>.txt beside each image"
    print(f"{where}: {len(done['written'])} captioned, {len(done['kept'])} kept (had a prompt file), "
          f"{len(done['unreadable'])} unreadable")
    for path, reason in done["unreadable"]:
        print(f"  unreadable: {path}: {reason}", file=sys.stderr)
    return 0


def _add_prepare(sub) -> None:
    prepare = sub.add_parser("prepare", help="build face manifests, reference pairs and portrait sets")
    steps = prepare.add_subparsers(dest="step", required=True)
    p = steps.add_parser("faces", help="detect faces (MTCNN) in every image under ROOT")
    p.add_argument("root", help="folder of photos (searched recursively)")
    p.add_argument("--manifest", help="output JSON Lines (default ROOT/faces.jsonl); existing entries are kept")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--device", help="torch device (default: cuda when present)")
    p.add_argument("--detect-size", type=int, default=1024, help="longest side used for detection")
    p.add_argument("--min-face-size", type=int, default=20, help="px, at the detection size")
    p.add_argument("--min-prob", type=float, default=0.9)
    p.add_argument("--retry-errors", action="store_true", help="detect again in files recorded as unreadable")
    p.set_defaults(func=_cmd_prepare_faces)
    p = steps.add_parser("prompts", help="caption every image under ROOT with a local captioner -> prompt files")
    p.add_argument("root", help="folder of photos (searched recursively)")
    p.add_argument("--captioner", required=True,
                   help="local transformers image-to-text model folder (e.g. a BLIP captioner; nothing is downloaded)")
    p.add_argument("--out", help="one JSON Lines map {path, prompt} instead of <stem>.txt beside each image")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=30)
    p.add_argument("--device", help="torch device (default: cuda when present)")
    p.add_argument("--overwrite", action="store_true", help="caption images that already have a prompt file too")
    p.set_defaults(func=_cmd_prepare_prompts)
    p = steps.add_parser("references", help="group faces by identity and pair each image with others of it")
    p.add_argument("manifest", help="face manifest from `prepare faces`")
    p.add_argument("--weights", help="InceptionResnetV1 state dict (facenet-pytorch vggface2), a local file")
    p.add_argument("--from-folders", action="store_true", help="identity = the image's folder")
    p.add_argument("--threshold", type=float, default=0.65, help="cosine similarity linking two faces")
    p.add_argument("--alignment", choices=["facenet", "ffhq"], default="facenet",
                   help="how faces are cut out for the net: MTCNN box + margin as facenet was trained, or the "
                        "FFHQ template (earlier headsup versions)")
    p.add_argument("--out", help="output JSON Lines (default: references.jsonl next to the manifest)")
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_prepare_references)
    p = steps.add_parser("portrait-set", help="filter (PortraitSR-4K thresholds) and split by identity")
    p.add_argument("manifest", help="face manifest from `prepare faces`")
    p.add_argument("--out", required=True, help="folder for train.jsonl, test.jsonl, rejected.jsonl")
    p.add_argument("--references", help="output of `prepare references` (default: identities from folders)")
    p.add_argument("--min-long-side", type=int, default=3840)
    p.add_argument("--min-short-side", type=int, default=2160)
    p.add_argument("--aspect-range", type=float, nargs=2, default=(0.6, 1.6), metavar=("MIN", "MAX"))
    p.add_argument("--min-eye-distance", type=float, default=64.0)
    p.add_argument("--min-sharpness", type=float, help="variance of the Laplacian of the face, 8-bit units")
    p.add_argument("--iqa-metric", help="pyiqa no-reference metric, e.g. musiq")
    p.add_argument("--iqa-weights", help="local weights file of --iqa-metric")
    p.add_argument("--min-iqa", type=float)
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=_cmd_prepare_portrait_set)


def _cmd_enhance(args: argparse.Namespace) -> int:
    import lightning as L

    from headsup.callbacks.predict_writer import PredictWriter
    from headsup.data.datamodule import SRDataModule
    from headsup.inference.pipeline import PipelineModule, SRPipeline
    from headsup.models.runtime import INFERENCE_OPTIONS

    if not Path(args.input).exists():
        raise FileNotFoundError(f"input not found: {args.input}")
    if not Path(args.weights).exists():
        raise FileNotFoundError(f"--weights: not found: {args.weights} (an export folder or a .ckpt)")
    pipe = SRPipeline.from_pretrained(args.weights, backbone=args.backbone, raw=args.raw,
                                      **{k: getattr(args, k) for k in INFERENCE_OPTIONS})
    outscale = None if args.scale is None or args.scale == pipe.scale else args.scale
    writer = PredictWriter(output_dir=args.output, ext=args.ext, suffix=args.suffix, overwrite=args.overwrite,
                           quality=args.quality, color_fix=args.color_fix or pipe.color_fix, outscale=outscale)
    dm = SRDataModule(predict_input=args.input, predict_reference=args.reference, num_workers=args.workers,
                      predict_prompts=args.prompts, predict_prompt=args.prompt, predict_prompt_format=args.prompt_format,
                      max_faces=pipe.max_faces, reference_size=pipe.reference_size)
    trainer = L.Trainer(accelerator=args.device, devices=1, precision=args.precision, logger=False,
                        callbacks=[writer], enable_model_summary=False)
    trainer.predict(PipelineModule(pipe), datamodule=dm, return_predictions=False)
    return 0


def _checkpoint_of(run_or_ckpt: str) -> Path:
    """A checkpoint file, or a run folder's checkpoints/last.ckpt."""
    from headsup.models.checkpoint import run_checkpoint

    path = Path(run_or_ckpt)
    if path.is_dir():
        last = run_checkpoint(path)
        if last is None:
            raise FileNotFoundError(f"{path} is a folder without checkpoints/last.ckpt (give a run folder of "
                                    f"`headsup fit` or a .ckpt file)")
        return last
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint or run folder not found: {path}")
    return path


def _cmd_export(args: argparse.Namespace) -> int:
    from headsup.inference.export import export_generator
    from headsup.inference.pipeline import generator_from_checkpoint
    from headsup.models.checkpoint import ema_weights
    from headsup.models.osediff_import import export_osediff

    if args.merged and args.format == "osediff":
        raise ValueError("--merged writes a diffusers folder beside a headsup export; it does not apply to "
                         "--format osediff")
    ckpt = _checkpoint_of(args.run)
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    generator, checkpoint = generator_from_checkpoint(ckpt, backbone=args.backbone, raw=args.raw)
    weights = "raw" if args.raw or not ema_weights(checkpoint) else "ema"
    updates = checkpoint.get("state_dict", {}).get("generator_updates")
    if args.format == "osediff":
        export_osediff(generator, out, overwrite=args.overwrite)
        print(f"{out}: {weights} weights of {ckpt} in OSEDiff's .pkl layout")
        return 0
    source = {"checkpoint": str(ckpt.resolve()), "generator_updates": None if updates is None else int(updates)}
    fix = (checkpoint.get("hyper_parameters") or {}).get("eval_color_fix", "adain")
    export_generator(generator, out, weights=weights, source=source, color_fix=fix, faces=checkpoint.get("faces"),
                     merged=args.merged, overwrite=args.overwrite)
    print(f"{out}: {weights} weights of {ckpt}" + (" (and merged/, a full diffusers folder)" if args.merged else "")
          + f"; run it with `headsup-tools enhance INPUT OUTPUT --weights {out} [--backbone SD_FOLDER]`")
    return 0


def _add_export(sub) -> None:
    p = sub.add_parser("export", help="a trained run as LoRA safetensors + headsup.json (diffusers/peft format)")
    p.add_argument("run", metavar="RUN_OR_CKPT", help="a `headsup fit` run folder (its checkpoints/last.ckpt) "
                                                      "or a checkpoint file")
    p.add_argument("out", metavar="OUT", help="export folder to write (a .pkl file with --format osediff)")
    p.add_argument("--raw", action="store_true", help="the live weights instead of the run's EMA average")
    p.add_argument("--merged", action="store_true",
                   help="also write OUT/merged: a full diffusers folder with the LoRA folded in (for tools "
                        "without LoRA support)")
    p.add_argument("--format", choices=["headsup", "osediff"], default="headsup",
                   help="osediff: OSEDiff's osediff.pkl layout (for OSEDiff's own test script)")
    p.add_argument("--backbone", default=None, help="the backbone folder, if it moved since training")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_cmd_export)


def _add_enhance(sub) -> None:
    p = sub.add_parser("enhance", help="enhance a photo or folder with an export or a checkpoint (headsup "
                                       "predict, short form; needs only the backbone folder)")
    p.add_argument("input", help="image file or folder (searched recursively)")
    p.add_argument("output", help="output folder (the input folder layout is kept)")
    p.add_argument("--weights", required=True, help="export folder (headsup-tools export), checkpoint (.ckpt) "
                                                    "or run folder (its checkpoints/last.ckpt)")
    p.add_argument("--backbone", default=None, help="local diffusers folder to run on instead of the recorded one "
                                                    "(same architecture)")
    p.add_argument("--raw", action="store_true", help="a checkpoint's live weights instead of its EMA average")
    p.add_argument("--scale", type=float, default=None, help="output size / input size (default: the model's)")
    p.add_argument("--reference", default=None, help="reference photo, or folder of them matched by name")
    p.add_argument("--prompts", default=None, help="each input's tags: txt (<stem>.txt beside it) or a .jsonl map")
    p.add_argument("--prompt", default=None, help="your prompt, for every input")
    p.add_argument("--prompt-format", default="{tags}",
                   help="the text from {tags} and {prompt} (OSEDiff's test script: \"{tags}, {prompt},\")")
    p.add_argument("--ext", default=None, choices=[".png", ".jpg", ".webp", ".tif"], help="output format (png)")
    p.add_argument("--suffix", default="", help="appended to each output file stem")
    p.add_argument("--quality", type=int, default=95, help="JPEG/WebP quality")
    p.add_argument("--color-fix", default=None, choices=["adain", "wavelet", "none"],
                   help="colour correction towards the input (default: the run's evaluation colour fix)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (kept by default)")
    p.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, 16-mixed")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda")
    p.add_argument("--workers", type=int, default=2, help="image-decoding worker processes")
    p.add_argument("--tiling", choices=["auto", "always", "never"], default=None)
    p.add_argument("--upsample", choices=["bicubic", "pil_bicubic"], default=None,
                   help="LQ upsampling before the model (pil_bicubic: as OSEDiff's test script)")
    p.add_argument("--tile-size", dest="tile_size", type=int, default=None, help="tile side in latent pixels")
    p.add_argument("--tile-overlap", dest="tile_overlap", type=int, default=None)
    p.add_argument("--tile-batch", dest="tile_batch", type=int, default=None)
    p.add_argument("--norm-passes", dest="norm_passes", type=int, default=None)
    p.add_argument("--memory-budget-gb", dest="memory_budget_gb", type=float, default=None)
    p.add_argument("--merge-lora", dest="merge_lora", action="store_const", const=True, default=None)
    p.add_argument("--lora-scale", dest="lora_scale", type=float, default=None, help="fidelity-generation knob")
    p.add_argument("--reference-strength", dest="reference_strength", type=float, default=None)
    p.add_argument("--channels-last", dest="channels_last", action="store_const", const=True, default=None)
    p.add_argument("--compile", action="store_const", const=True, default=None, help="torch.compile UNet and VAE")
    p.add_argument("--cuda-graphs", dest="cuda_graphs", action="store_const", const=True, default=None,
                   help="replay each image size's untiled call as a CUDA graph")
    p.add_argument("--split-group-norm", dest="split_group_norm", action="store_const", const=True, default=None,
                   help="GroupNorm statistics by a split reduction on CUDA (see the README)")
    p.set_defaults(func=_cmd_enhance)


def _cmd_import_osediff(args: argparse.Namespace) -> int:
    from headsup.models.osediff_import import import_osediff

    out = import_osediff(args.pkl, args.out, args.backbone, overwrite=args.overwrite, prompt=args.prompt)
    print(f"{out}: OSEDiff checkpoint {args.pkl} on {args.backbone}; run it with `headsup-tools enhance INPUT "
          f"OUTPUT --weights {out}` or `headsup predict --config CONFIG --ckpt_path {out} ...`")
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
    p = sub.add_parser("tiny-weights", help="random stand-in weight files for tiny runs (not real weights)")
    p.add_argument("out", help="output folder")
    p.set_defaults(func=_cmd_tiny_weights)
    _add_prepare(sub)
    _add_enhance(sub)
    _add_export(sub)
    p = sub.add_parser("import-osediff", help="OSEDiff's released checkpoint (osediff.pkl) as a headsup checkpoint")
    p.add_argument("pkl", metavar="OSEDIFF_PKL", help="OSEDiff's checkpoint (github.com/cswry/OSEDiff, osediff.pkl)")
    p.add_argument("out", metavar="OUT", help="headsup checkpoint to write (.ckpt)")
    p.add_argument("--backbone", required=True,
                   help="local SD 2.1-base diffusers folder (unet/, vae/, scheduler/, text_encoder/, tokenizer/); "
                        "the checkpoint loads it from this path")
    p.add_argument("--prompt", default="", help="the model's fixed prompt, for images without their own (per-image "
                                                "tags: enhance --prompts / predict --data.predict_prompts)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    p.set_defaults(func=_cmd_import_osediff)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        command = " ".join(filter(None, [args.command, getattr(args, "step", None)]))
        print(f"headsup-tools {command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
