"""Prompt files from a local image-to-text model, run once over a dataset (`prepare prompts`).

OSEDiff tags its training images with RAM and its test inputs with DAPE; neither is a
transformers model. Any captioner that transformers loads from a local folder with
`AutoProcessor` + `AutoModelForImageTextToText` (BLIP, ...) writes the same kind of files here,
and prompt files written by another tagger are read the same way (`headsup.data.prompts`).
Greedy decoding, so a rerun writes the same text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from headsup.data.io import ImageReadError, list_images, read_image


def load_captioner(folder: str | os.PathLike, device: str | torch.device = "cpu"):
    """(processor, model) from a local transformers folder; nothing is downloaded."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = Path(folder).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"captioner not found: {path} has no config.json (a local transformers "
                                "image-to-text model folder, e.g. a BLIP captioner saved with save_pretrained)")
    processor = AutoProcessor.from_pretrained(path, local_files_only=True)
    model = AutoModelForImageTextToText.from_pretrained(path, local_files_only=True).eval().to(device)
    return processor, model


@torch.no_grad()
def caption(images: list, processor, model, max_new_tokens: int = 30) -> list[str]:
    """Greedy captions of PIL images, stripped of special tokens and white space."""
    inputs = processor(images=images, return_tensors="pt").to(model.device)
    ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return [t.strip() for t in processor.batch_decode(ids, skip_special_tokens=True)]


def _pil(rgb: torch.Tensor):
    from PIL import Image

    return Image.fromarray((rgb.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_prompts(root: str | os.PathLike, captioner: str | os.PathLike, out: str | os.PathLike | None = None,
                  batch_size: int = 8, max_new_tokens: int = 30, device: str | None = None,
                  overwrite: bool = False) -> dict[str, list]:
    """Caption every image under `root`: `<stem>.txt` beside each (images that have one are kept
    unless `overwrite`), or, with `out`, one JSON Lines map {"path", "prompt"} with paths relative
    to it (an existing map is refused unless `overwrite`). Returns {"written": paths, "kept":
    paths, "unreadable": [(path, reason)]}."""
    images = list_images(root)
    if not images:
        raise FileNotFoundError(f"no images (png, jpg, webp, tif, bmp) found in {root}")
    out = Path(out) if out is not None else None
    if out is None:  # a.png and a.jpg would share a.txt
        by_file: dict[Path, list[Path]] = {}
        for p in images:
            by_file.setdefault(p.with_suffix(".txt"), []).append(p)
        clash = next((v for v in by_file.values() if len(v) > 1), None)
        if clash:
            raise ValueError(f"{clash[0]} and {clash[1]} would share the prompt file {clash[0].with_suffix('.txt')}: "
                             "rename one, or write a map with --out")
    if out is not None and out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    kept = [p for p in images if out is None and not overwrite and p.with_suffix(".txt").exists()]
    todo = [p for p in images if p not in kept]
    processor, model = load_captioner(captioner, device or ("cuda" if torch.cuda.is_available() else "cpu"))
    result: dict[str, list] = {"written": [], "kept": kept, "unreadable": []}
    table = []
    for start in range(0, len(todo), batch_size):
        loaded = []
        for path in todo[start : start + batch_size]:
            try:
                loaded.append((path, _pil(read_image(path).rgb)))
            except ImageReadError as err:
                result["unreadable"].append((path, str(err)))
        if not loaded:
            continue
        for (path, _), text in zip(loaded, caption([im for _, im in loaded], processor, model, max_new_tokens)):
            if out is None:
                _write_atomic(path.with_suffix(".txt"), text + "\n")
            table.append({"path": os.path.relpath(path.resolve(), out.parent.resolve()) if out else str(path),
                          "prompt": text})
            result["written"].append(path)
    if out is not None:
        _write_atomic(out, "".join(json.dumps(r) + "\n" for r in table))
    return result
