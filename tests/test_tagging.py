"""Prompt files from a local captioner: one per image, the captioner's own greedy output,
resumable, and readable by the datasets' prompt sources."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from headsup.data.datasets import EvalDataset
from headsup.data.specs import DatasetSpec
from headsup.data.tagging import write_prompts
from headsup.testing.tiny import write_tiny_captioner


@pytest.fixture(scope="module")
def captioner(tmp_path_factory):
    return write_tiny_captioner(tmp_path_factory.mktemp("captioner"))


@pytest.fixture()
def photos(tmp_path):
    from skimage.data import astronaut, chelsea, coffee

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for name, image in (("astronaut.png", astronaut()), ("sub/chelsea.jpg", chelsea()), ("coffee.png", coffee())):
        Image.fromarray(image).save(folder / name)
    return folder


def _direct(captioner, path):
    """The captioner run through transformers' own API, greedy."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(captioner)
    model = AutoModelForImageTextToText.from_pretrained(captioner).eval()
    with torch.no_grad():
        ids = model.generate(**processor(images=Image.open(path).convert("RGB"), return_tensors="pt"),
                             max_new_tokens=12, do_sample=False)
    return processor.batch_decode(ids, skip_special_tokens=True)[0].strip()


def test_prompt_files_hold_the_captioners_output_and_reruns_keep_them(photos, captioner):
    images = sorted(p for p in photos.rglob("*") if p.suffix in (".png", ".jpg"))
    done = write_prompts(photos, captioner, batch_size=2, max_new_tokens=12)
    assert sorted(done["written"]) == images and not done["kept"] and not done["unreadable"]
    texts = {p: p.with_suffix(".txt").read_text().strip() for p in images}
    assert all(texts[p] == _direct(captioner, p) for p in images)
    assert len(set(texts.values())) > 1  # each image its own caption

    (photos / "coffee.txt").write_text("my own tags")  # edited by hand: a rerun keeps it
    (photos / "broken.png").write_bytes(b"not a png")
    again = write_prompts(photos, captioner, max_new_tokens=12)
    assert len(again["kept"]) == 3 and not again["written"]
    assert [p.name for p, _ in again["unreadable"]] == ["broken.png"]
    assert (photos / "coffee.txt").read_text() == "my own tags"
    (photos / "broken.png").unlink()
    data = EvalDataset(DatasetSpec("tagged", hq=str(photos), prompts="txt"), scale=4)
    assert dict(zip(data.files, data.prompts)) == {**texts, photos / "coffee.png": "my own tags"}


def test_a_jsonl_map_is_read_back_by_the_dataset(photos, captioner, tmp_path):
    table = tmp_path / "meta" / "tags.jsonl"
    table.parent.mkdir()
    write_prompts(photos, captioner, out=table, max_new_tokens=12)
    data = EvalDataset(DatasetSpec("tagged", hq=str(photos), prompts=str(table)), scale=4)
    assert data.prompts[0] == _direct(captioner, data.files[0])
    assert not list(photos.rglob("*.txt"))
    with pytest.raises(FileExistsError, match="tags.jsonl exists"):
        write_prompts(photos, captioner, out=table)
    with pytest.raises(FileNotFoundError, match="captioner not found: .*nowhere"):
        write_prompts(photos, tmp_path / "nowhere")
    Image.open(photos / "coffee.png").save(photos / "coffee.jpg")
    with pytest.raises(ValueError, match=r"coffee\.(png|jpg) and .*coffee\.(png|jpg) would share .*coffee\.txt"):
        write_prompts(photos, captioner)


def test_prepare_prompts_command(photos, captioner, tmp_path, capsys):
    from headsup.tools import main

    assert main(["prepare", "prompts", str(photos), "--captioner", str(captioner), "--max-new-tokens", "12"]) == 0
    assert "3 captioned, 0 kept" in capsys.readouterr().out
    assert sorted(p.stem for p in photos.rglob("*.txt")) == ["astronaut", "chelsea", "coffee"]
    assert main(["prepare", "prompts", str(photos), "--captioner", str(tmp_path / "none")]) == 2
    assert "captioner not found" in capsys.readouterr().err
