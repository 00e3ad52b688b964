"""Per-image prompts: where they come from, and that the generator, the teacher's positive branch
and the fake score are conditioned on each image's own text, embedded once per unique text."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image
from transformers import CLIPTextModel, CLIPTokenizer

from headsup.data.datamodule import collate
from headsup.data.datasets import EvalDataset, RandomCropDataset
from headsup.data.prompts import prompt_source
from headsup.data.specs import DatasetSpec
from headsup.models.backbone import DiffusersFolder
from headsup.models.generator import OneStepSR
from headsup.models.teacher import OSEDIFF_NEGATIVE_PROMPT, TeacherWithFakeScore
from headsup.objectives.base import StepContext
from headsup.objectives.vsd import VSDLoss


@pytest.fixture()
def photos(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    for i, name in enumerate(("a.png", "sub/b.png", "c.png")):
        Image.new("RGB", (64, 64), (40 * i, 100, 200)).save(folder / name)
    return folder


def test_prompt_sources_read_every_image_and_name_the_missing_one(photos, tmp_path):
    (photos / "a.txt").write_text("a red car, street\n")
    (photos / "sub" / "b.txt").write_text("a dog")
    spec = DatasetSpec("set", hq=str(photos), prompts="txt")
    with pytest.raises(FileNotFoundError, match=r"dataset 'set'.*c\.txt.*c\.png"):
        EvalDataset(spec, scale=4)
    (photos / "c.txt").write_text("")
    data = EvalDataset(spec, scale=4)
    assert {d.stem: p for d, p in zip(data.files, data.prompts)} == {"a": "a red car, street", "b": "a dog", "c": ""}

    table = tmp_path / "prompts.jsonl"  # paths relative to the map's folder, as a tagger writes them
    table.write_text("\n".join(json.dumps({"path": f"photos/{n}", "prompt": f"tag {n}"})
                               for n in ("a.png", "sub/b.png")) + "\n")
    with pytest.raises(KeyError, match=r"prompts.jsonl has no prompt for .*c\.png"):
        EvalDataset(DatasetSpec("set", hq=str(photos), prompts=str(table)), scale=4)
    table.write_text(table.read_text() + json.dumps({"path": str(photos / "c.png"), "prompt": "tag c"}) + "\n")
    data = EvalDataset(DatasetSpec("set", hq=str(photos), prompts=str(table)), scale=4)
    assert {d.stem: p for d, p in zip(data.files, data.prompts)} == {"a": "tag a.png", "b": "tag sub/b.png", "c": "tag c"}

    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": f"photos/{n}", "prompt": n[0]}) + "\n" for n in ("a.png", "c.png")))
    data = EvalDataset(DatasetSpec("m", manifest=str(manifest), prompts="manifest"), scale=4)
    assert data.prompts == ["a", "c"] and data[1]["prompt"] == "c"
    assert EvalDataset(DatasetSpec("f", hq=str(photos), prompt="portrait"), scale=4)[0]["prompt"] == "portrait"
    assert "prompt" not in EvalDataset(DatasetSpec("none", hq=str(photos)), scale=4)[0]
    with pytest.raises(ValueError, match="not both"):
        prompt_source("txt", "portrait")
    with pytest.raises(ValueError, match="'txt', 'manifest' or a .jsonl"):
        prompt_source("tags.csv", None)


def test_training_crops_carry_their_prompt_and_mixtures_fill_in_none(photos):
    for name in ("a", "sub/b", "c"):
        (photos / f"{name}.txt").write_text(f"prompt of {name.split('/')[-1]}")
    data = RandomCropDataset(DatasetSpec("t", hq=str(photos), prompts="txt"), crop_size=32, max_faces=1)
    items = [data[i] for i in range(3)]
    assert [i["prompt"] for i in items] == [f"prompt of {p.stem}" for p in data.files]
    plain = RandomCropDataset(DatasetSpec("g", hq=str(photos)), crop_size=32, max_faces=1)[0]
    batch = collate([items[0], plain])
    assert batch["prompt"] == [items[0]["prompt"], None]  # None: the model's own fixed prompt


def _encoder(tiny_sd_dir):
    """The folder's tokenizer and text encoder, loaded here with transformers (not through headsup)."""
    tok = CLIPTokenizer.from_pretrained(tiny_sd_dir, subfolder="tokenizer")
    enc = CLIPTextModel.from_pretrained(tiny_sd_dir, subfolder="text_encoder").eval()

    def embed(texts):
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids
        with torch.no_grad():
            return enc(ids)[0]
    return embed


def test_generator_uses_each_images_prompt_embedded_once(tiny_sd_dir):
    source = DiffusersFolder(str(tiny_sd_dir), prompt="fixed")
    torch.manual_seed(0)
    gen = OneStepSR(source, tiling="never").eval()
    embed = _encoder(tiny_sd_dir)
    lq = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["a cat", None, "a dog"]
    with torch.no_grad():
        out = gen.generate(lq, prompts=prompts)
        z = gen.encode(lq)
        expected = gen.denoise(z, prompt_embeds=embed(["a cat", "fixed", "a dog"]))
        torch.testing.assert_close(out.latent, expected, atol=1e-4, rtol=1e-4)  # (one image at a time there)
        fixed = gen.generate(lq).latent
        torch.testing.assert_close(out.latent[1], fixed[1], atol=1e-4, rtol=1e-4)  # None: the fixed prompt
        assert (out.latent[0] - fixed[0]).abs().max() > 1e-3  # a prompt changes the output
        encoded = source.encoded
        gen.generate(lq, prompts=["a dog", "a cat", "a cat"])  # nothing new: no text encoder call
        assert source.encoded == encoded
        gen.generate(lq[:1], prompts=["a bird"])
        assert source.encoded == encoded + 1


def test_teacher_positive_branch_and_fake_score_take_the_images_prompt(tiny_sd_dir):
    torch.manual_seed(0)
    scores = TeacherWithFakeScore(DiffusersFolder(str(tiny_sd_dir)), guidance_scale=7.5, prompt="fallback")
    embed = _encoder(tiny_sd_dir)
    prompts = ["a cat", None]
    positive = scores.positive_embeds(prompts)
    torch.testing.assert_close(positive, embed(["a cat", "fallback"]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(scores.negative_embeds, embed([OSEDIFF_NEGATIVE_PROMPT]), atol=1e-5, rtol=1e-5)

    z_t, t = torch.randn(2, 4, 8, 8), torch.tensor([300, 700])
    unet = scores.unet
    with torch.no_grad():  # by hand: the base UNet (adapters off) on each image's prompt and the negative one
        unet.disable_adapters()
        pos = unet(z_t, t, encoder_hidden_states=positive).sample
        neg = unet(z_t, t, encoder_hidden_states=scores.negative_embeds.expand(2, -1, -1)).sample
        unet.enable_adapters()
        torch.testing.assert_close(scores.real_eps(z_t, t, positive), neg + 7.5 * (pos - neg), atol=1e-4, rtol=1e-4)

    seen = {}  # the VSD objective hands the batch's prompts to both scores
    real, fake = scores.real_eps, scores.fake_output
    scores.real_eps = lambda z, t, p=None: (seen.__setitem__("real", p), real(z, t, p))[1]
    scores.fake_output = lambda z, t, p=None: (seen.__setitem__("fake", p), fake(z, t, p))[1]
    vsd = VSDLoss(scores)
    z0 = torch.randn(2, 4, 8, 8, requires_grad=True)
    ctx = StepContext(lq=z0, hq=z0, sr=z0, latent=z0, batch={"prompt": prompts})
    vsd.generator_loss(ctx)
    torch.testing.assert_close(seen["real"], positive)
    vsd.aux_loss(ctx)
    torch.testing.assert_close(seen["fake"], positive)
    vsd.generator_loss(StepContext(lq=z0, hq=z0, sr=z0, latent=z0))  # no prompts: the fixed one
    torch.testing.assert_close(seen["real"], scores.prompt_embeds)


def test_fit_with_per_image_prompts_embeds_each_text_once(tmp_path, samples_dir, tiny_sd_dir):
    """Through the CLI: prompt files beside the training photos reach the generator via the
    DataModule (collate, pool, device transfer); the text encoder runs once per unique prompt."""
    import shutil

    import yaml

    from headsup.cli import build_cli
    from tests.conftest import make_config

    train = tmp_path / "train"
    shutil.copytree(samples_dir / "train", train)
    images = sorted(p for p in train.rglob("*") if p.suffix == ".png")
    for i, image in enumerate(images):
        image.with_suffix(".txt").write_text(f"photo {i % 2}")  # two unique prompts
    config = make_config(tmp_path, samples_dir, tiny_sd_dir, max_steps=6, val_check_interval=1000)
    cfg = yaml.safe_load(config.read_text())
    cfg["data"]["train"][0].update(hq=str(train), prompts="txt")
    cfg["data"]["pool_size"] = 2 * cfg["data"]["batch_size"]
    config.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cli = build_cli(["--config", str(config), "--data.val_sets", "[]"], run=False)
    source = cli.model.generator.backbone_source
    seen = []
    generate = cli.model.generator.generate
    cli.model.generator.generate = lambda lq, **kw: seen.append(kw.get("prompts")) or generate(lq, **kw)
    before = source.encoded
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert len(seen) == 6 and all(p is not None and set(p) <= {"photo 0", "photo 1"} for p in seen)
    assert source.encoded - before == 2


def test_a_mixture_with_and_without_prompts_keeps_each_prompt_on_its_image_through_the_pool(photos, tmp_path):
    """Every training batch of a mixture has "prompt" (None for the set without), so the pool, which
    fixes its keys at the first batch, moves each prompt with its image; a batch whose per-sample
    entries change is refused rather than mixed up."""
    from types import SimpleNamespace

    from headsup.data.datamodule import SRDataModule
    from headsup.degradations.pool import PairPool

    plain = tmp_path / "plain"
    plain.mkdir()
    for i in range(3):
        Image.new("RGB", (64, 64), (0, 50 * i, 0)).save(plain / f"p{i}.png")
    for name in ("a", "sub/b", "c"):
        (photos / f"{name}.txt").write_text(f"prompt of {name.split('/')[-1]}")
    dm = SRDataModule(train=[DatasetSpec("tagged", hq=str(photos), prompts="txt"), DatasetSpec("plain", hq=str(plain))],
                      crop_size=32, batch_size=2, num_workers=0, pool_size=4)
    dm.trainer = SimpleNamespace(training=True, global_rank=0)
    colours = {}  # the green channel tells the image apart: 100 for the tagged set, 0/50/100 for the plain one
    for data in dm.train_dataloader().dataset.datasets:
        for i in range(len(data.records)):
            item = data[i]
            colours[(round(float(item["hq"][0].mean()) * 255), round(float(item["hq"][2].mean()) * 255))] = item["prompt"]
    seen = 0
    for batch in dm.train_dataloader():
        assert "prompt" in batch and len(batch["prompt"]) == 2
        out = dm.on_after_batch_transfer(batch, 0)
        for hq, prompt in zip(out["hq"], out["prompt"]):
            assert colours[(round(float(hq[0].mean()) * 255), round(float(hq[2].mean()) * 255))] == prompt
            seen += 1
    assert seen == 6
    pool = PairPool(4)
    pool({"lq": torch.zeros(2, 1), "prompt": ["a", "b"]})
    with pytest.raises(ValueError, match=r"missing \['prompt'\]"):
        pool({"lq": torch.zeros(2, 1)})


def test_a_training_batch_conditions_each_image_on_its_own_prompt(tiny_sd_dir):
    """In training the batch goes through the UNet together: row i must get prompt i."""
    source = DiffusersFolder(str(tiny_sd_dir))
    torch.manual_seed(0)
    gen = OneStepSR(source).train()
    embed = _encoder(tiny_sd_dir)
    lq = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = gen.generate(lq, prompts=["a cat", "a dog"])
    assert out.latent.requires_grad
    with torch.no_grad():
        z = gen.encode(lq)  # the posterior mean: sample_latent is off
        expected = gen.denoise(z, prompt_embeds=embed(["a cat", "a dog"]))
        swapped = gen.denoise(z, prompt_embeds=embed(["a dog", "a cat"]))
    torch.testing.assert_close(out.latent.detach(), expected, atol=1e-5, rtol=1e-5)
    assert (out.latent.detach() - swapped).abs().max() > 1e-3
