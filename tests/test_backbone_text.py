"""A diffusers folder with a text encoder: the empty prompt is embedded once at build time."""

from __future__ import annotations

import json

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from headsup.models.backbone import DiffusersFolder
from headsup.testing.tiny import TINY_UNET, TinySD


def _tiny_tokenizer(folder):
    folder.mkdir(parents=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "a</w>": 2, "b</w>": 3, "a": 4, "b": 5}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=8)
    tok.save_pretrained(folder)
    return tok


def test_prompt_embedding_comes_from_the_text_encoder(tmp_path):
    parts = TinySD().build()
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    tok = _tiny_tokenizer(tmp_path / "tokenizer")
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=6, hidden_size=TINY_UNET["cross_attention_dim"], intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=8, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )
    encoder = CLIPTextModel(config).eval()
    encoder.save_pretrained(tmp_path / "text_encoder")

    built = DiffusersFolder(str(tmp_path)).build()
    ids = tok([""], padding="max_length", max_length=8, return_tensors="pt").input_ids
    with torch.no_grad():
        expected = encoder(ids)[0]
    assert built.prompt_embeds.shape == (1, 8, TINY_UNET["cross_attention_dim"])
    assert torch.allclose(built.prompt_embeds, expected, atol=1e-6)
    assert built.prompt_embeds.abs().sum() > 0


def _text_folder(root):
    """A tiny diffusers folder as the hub lays it out, with a CLIP text encoder and tokenizer."""
    from headsup.testing.tiny import tiny_text_encoder

    parts = TinySD().build()
    parts.unet.save_pretrained(root / "unet")
    parts.vae.save_pretrained(root / "vae")
    tok, encoder = tiny_text_encoder()
    tok.save_pretrained(root / "tokenizer")
    encoder.save_pretrained(root / "text_encoder")
    return tok, encoder


def test_one_command_loads_the_text_encoder_once_and_drops_it(tmp_path, samples_dir, monkeypatch):
    """Generator prompt + the VSD teacher's CFG pair: one text-encoder load for the whole command,
    each prompt embedded by the real encoder, and the encoder gone once the model is built."""
    import yaml

    from headsup.cli import build_cli
    from tests.conftest import make_config

    tok, encoder = _text_folder(tmp_path / "sd")
    loads = []
    real = CLIPTextModel.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        loads.append(args)
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(CLIPTextModel, "from_pretrained", classmethod(counting))
    config = make_config(tmp_path, samples_dir, tmp_path / "sd")
    cfg = yaml.safe_load(config.read_text())
    cfg["model"]["objectives"]["vsd"] = {"class_path": "headsup.objectives.vsd.VSDLoss", "init_args": {"scores": {
        "class_path": "headsup.models.teacher.TeacherWithFakeScore",
        "init_args": {"guidance_scale": 7.5, "prompt": "a", "negative_prompt": "b"}}}}
    config.write_text(yaml.safe_dump(cfg))
    model = build_cli(["--config", str(config)], run=False).model
    assert len(loads) == 1
    scores = model.objectives["vsd"].scores
    with torch.no_grad():
        expected = encoder(tok(["", "a", "b"], padding="max_length", max_length=77, return_tensors="pt").input_ids)[0]
    assert torch.allclose(model.generator.prompt_embeds[0], expected[0], atol=1e-6)
    assert torch.allclose(scores.prompt_embeds[0], expected[1], atol=1e-6)
    assert torch.allclose(scores.negative_embeds[0], expected[2], atol=1e-6)
    assert model.generator.backbone_source._text is None  # released: nothing holds the encoder any more


def test_folder_without_text_encoder_warns_and_a_cfg_teacher_on_it_is_refused(tmp_path):
    import pytest

    from headsup.models.generator import OneStepSR
    from headsup.models.teacher import TeacherWithFakeScore
    from headsup.objectives.vsd import VSDLoss
    from headsup.system import SRSystem

    parts = TinySD().build()
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    with pytest.warns(UserWarning, match="no text_encoder/ \\+ tokenizer/.*embed as zeros"):
        generator = OneStepSR(DiffusersFolder(str(tmp_path)))
    assert generator.prompt_embeds.abs().sum() == 0
    with pytest.warns(UserWarning, match="embed identically.*guidance_scale 7.5"):  # built: evaluation works
        system = SRSystem(generator, {"vsd": VSDLoss(TeacherWithFakeScore(guidance_scale=7.5, prompt="a portrait"))})
    z = torch.randn(1, 4, 8, 8)
    with pytest.raises(ValueError, match="embed identically.*guidance_scale 7.5.*negative_prompt"):
        system.objectives["vsd"].scores.real_eps(z, torch.tensor([500]))  # training refuses it
    with pytest.warns(UserWarning, match="embed as zeros"):  # no guidance: nothing for the prompts to do
        SRSystem(generator, {"vsd": VSDLoss(TeacherWithFakeScore(guidance_scale=1.0))})
    import warnings

    with warnings.catch_warnings(record=True) as caught:  # per-image prompts in training: one warning, not one a batch
        warnings.simplefilter("always")
        for text in ("a", "b", "c"):
            generator.prompt_embeddings([text])
    assert sum("embed as zeros" in str(w.message) for w in caught) == 1


def test_teacher_default_negative_prompt_is_osediffs():
    """The VSD teacher's default negative prompt is `--neg_prompt` of OSEDiff's train_osediff.sh."""
    from headsup.models.teacher import TeacherWithFakeScore

    osediff = ("painting, oil painting, illustration, drawing, art, sketch, cartoon, CG Style, 3D render, unreal "
               "engine, blurring, dirty, messy, worst quality, low quality, frames, watermark, signature, jpeg "
               "artifacts, deformed, lowres, over-smooth")
    assert TeacherWithFakeScore().prompts[1] == osediff  # (prompt, negative_prompt); built lazily


def test_tiny_tokenizer_is_clips_bpe_as_sd2_configures_it():
    """The stand-in tokenizer splits text as SD's does: CLIP's ids ("a" 320, "photo" 1125, "of" 539,
    "cat" 2368, "," 267; start 49406, end 49407), padded with "!" (id 0) to 77 tokens, as SD 2.x."""
    from headsup.testing.tiny import tiny_text_encoder

    tok, encoder = tiny_text_encoder()
    assert len(tok) == 49408 == encoder.config.vocab_size
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok("A Photo, of a CAT").input_ids == [49406, 320, 1125, 267, 539, 320, 2368, 49407]  # lower-cased
    padded = tok([""], padding="max_length", max_length=tok.model_max_length, truncation=True).input_ids[0]
    assert padded[:3] == [49406, 49407, 0] and len(padded) == 77 and tok.pad_token == "!"
    assert len(tok("word " * 200, truncation=True).input_ids) == 77
