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
