"""Tiny SD-shaped components: the same classes as the real model, a thousandth the size.

The UNet keeps SD's block structure (cross-attention blocks with linear projections,
attention only at the coarsest level so its cost stays bounded on large inputs) with
three levels of 32/32/64 channels and 8 channels per norm group, as SD has;
the VAE has one level (no downsampling) and 4 latent channels, so that a short
autoencoder pretraining (`pretrain_tiny_backbone`) reaches a usable decoder on a
CPU in about half a minute. A forward pass takes milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from headsup.models.backbone import FromConfig

TINY_UNET = {
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    "block_out_channels": [32, 32, 64],
    "layers_per_block": 1,
    "attention_head_dim": 8,
    "cross_attention_dim": 32,
    "use_linear_projection": True,
    "norm_num_groups": 8,
}
TINY_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"],
    "up_block_types": ["UpDecoderBlock2D"],
    "block_out_channels": [32],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "mid_block_add_attention": False,
    "sample_size": 64,
    "scaling_factor": 0.5,
}


class TinySD(FromConfig):
    """`FromConfig` with the tiny UNet/VAE above (random weights, 8-token zero prompt).

    Args:
        seed: Seed of the random initialisation.
        prompt_length: Token count of the prompt embedding.
    """

    def __init__(self, seed: int = 0, prompt_length: int = 8) -> None:
        super().__init__(unet=TINY_UNET, vae=TINY_VAE, prompt_length=prompt_length, seed=seed)


def _random_crops(images: list, n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    out = []
    for _ in range(n):
        img = images[int(torch.randint(len(images), (1,), generator=generator))]
        _, h, w = img.shape
        y = int(torch.randint(h - size + 1, (1,), generator=generator))
        x = int(torch.randint(w - size + 1, (1,), generator=generator))
        out.append(img[:, y : y + size, x : x + size])
    return torch.stack(out)


TINY_PROMPT_TOKENS = 77  # as SD's CLIP tokenizer


def _clip_byte_symbols() -> list[str]:
    """CLIP's 256 byte symbols in its vocabulary order (printable Latin-1 bytes as themselves, then
    the others mapped above U+0100)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + n) for n in range(len(others))]


def clip_tokenizer_files(out: str | Path) -> Path:
    """`vocab.json` + `merges.txt` of CLIP's BPE tokenizer (49408 tokens, as SD's `tokenizer/`),
    made from the vocabulary file open-clip-torch ships (`bpe_simple_vocab_16e6.txt.gz`)."""
    import gzip
    import importlib.util
    import json

    spec = importlib.util.find_spec("open_clip")
    if spec is None:
        raise ModuleNotFoundError("open-clip-torch ships CLIP's BPE vocabulary: pip install --no-deps "
                                  "open-clip-torch (make install does)")
    source = Path(spec.submodule_search_locations[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(source).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = _clip_byte_symbols()
    vocab = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges),
             "<|startoftext|>", "<|endoftext|>"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return out


def tiny_text_encoder(seed: int = 0):
    """A random two-layer CLIP text encoder of the tiny UNet's width, with CLIP's real BPE tokenizer
    as SD 2.x configures it (77 tokens, padded with "!"): prompts are split as a real run splits them.

    Returns:
        (tokenizer, encoder).
    """
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        files = clip_tokenizer_files(tmp)
        tokenizer = CLIPTokenizer(str(files / "vocab.json"), str(files / "merges.txt"), pad_token="!",
                                  model_max_length=TINY_PROMPT_TOKENS)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TINY_UNET["cross_attention_dim"], intermediate_size=64,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=TINY_PROMPT_TOKENS,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        encoder = CLIPTextModel(config).eval()
    return tokenizer, encoder


def write_tiny_captioner(out: str | Path, seed: int = 0) -> Path:
    """A random two-layer BLIP captioner (32 px input, a 24-word vocabulary) saved as transformers
    saves BLIP-base, for `prepare prompts` on a machine without a real one. Its captions are
    random word strings."""
    import tempfile

    from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "a", "photo", "of", "man", "woman", "portrait",
             "face", "smiling", "outdoor", "street", "cat", "red", "with", "hat", "city", "coffee", "cup", "rocket"]
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "vocab.txt").write_text("\n".join(words) + "\n")
        tokenizer = BertTokenizerFast(str(Path(tmp) / "vocab.txt"), do_lower_case=True, bos_token="[DEC]")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}), tokenizer=tokenizer)
    layer = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37)
    config = BlipConfig(
        text_config=dict(vocab_size=len(words), max_position_embeddings=40, bos_token_id=5, pad_token_id=0, initializer_range=0.5,
                         sep_token_id=3, eos_token_id=3, **layer),
        vision_config=dict(image_size=32, patch_size=16, initializer_range=0.5, **layer), projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def pretrain_tiny_backbone(
    image_dir: str | Path,
    out_dir: str | Path,
    vae_steps: int = 600,
    unet_steps: int = 200,
    crop: int = 48,
    batch_size: int = 4,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
) -> Path:
    """Stand-in for "Stable Diffusion pretrained": fit the tiny VAE as an autoencoder and the
    tiny UNet as an epsilon-prediction denoiser on crops of real photos (conditioned on the tiny
    text encoder's embedding of the empty prompt), then save them as a diffusers folder laid out
    as the hub's (unet/, vae/, scheduler/, text_encoder/, tokenizer/) that `DiffusersFolder` loads
    like a real one.

    Returns:
        The output folder.
    """
    from headsup.data.io import list_images, read_image
    from headsup.models.backbone import SD_SCHEDULER, _schedule

    files = list_images(image_dir)
    images = [img.rgb for img in map(read_image, files) if min(img.rgb.shape[-2:]) >= crop]
    if not images:
        raise ValueError(f"no image of at least {crop}x{crop} px in {image_dir}")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vae, unet = AutoencoderKL(**TINY_VAE), UNet2DConditionModel(**TINY_UNET)
    opt = torch.optim.Adam(vae.parameters(), lr)
    for step in range(vae_steps):
        x = _random_crops(images, batch_size, crop, gen) * 2 - 1
        loss = F.mse_loss(vae.decode(vae.encode(x).latent_dist.mode()).sample, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"vae step {step + 1}/{vae_steps}: mse {loss.item():.4f}", flush=True)
    vae.requires_grad_(False).eval()
    alphas_cumprod, _ = _schedule(SD_SCHEDULER)
    tokenizer, encoder = tiny_text_encoder(seed=seed)
    with torch.no_grad():  # the UNet learns under the empty prompt's embedding, as the generator will call it
        ids = tokenizer([""], padding="max_length", max_length=TINY_PROMPT_TOKENS, return_tensors="pt").input_ids
        prompt = encoder(ids)[0].expand(batch_size, -1, -1)
    opt = torch.optim.Adam(unet.parameters(), lr)
    for step in range(unet_steps):
        x = _random_crops(images, batch_size, crop // 2, gen) * 2 - 1
        z = vae.encode(x).latent_dist.mode() * TINY_VAE["scaling_factor"]
        t = torch.randint(0, len(alphas_cumprod), (batch_size,), generator=gen)
        a = alphas_cumprod[t].view(-1, 1, 1, 1)
        noise = torch.randn(z.shape, generator=gen)
        pred = unet(a.sqrt() * z + (1 - a).sqrt() * noise, t, encoder_hidden_states=prompt).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"unet step {step + 1}/{unet_steps}: eps mse {loss.item():.4f}", flush=True)
    out = Path(out_dir)
    vae.save_pretrained(out / "vae")
    unet.save_pretrained(out / "unet")
    DDPMScheduler(**SD_SCHEDULER).save_pretrained(out / "scheduler")
    tokenizer.save_pretrained(out / "tokenizer")
    encoder.save_pretrained(out / "text_encoder")
    return out


def write_tiny_weights(out_dir: str | Path, seed: int = 0) -> dict[str, Path]:
    """Randomly initialised stand-ins for the weight files real runs load, for tests and tiny runs
    on a machine without them: LPIPS's VGG16 features, facenet InceptionResnetV1, timm's
    `test_resnet` discriminator backbone and the FID Inception. They exercise the loading and
    training code; losses computed with them mean nothing perceptually. The LPIPS linear layers
    are the real ones torchmetrics ships (the objectives' default): `lpips` names that file."""
    import timm
    from facenet_pytorch import InceptionResnetV1
    from torchvision.models import vgg16

    from headsup.models.lpips import shipped_lpips_weights

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / file for name, file in (
        ("vgg", "vgg16_features_random.pth"), ("facenet", "facenet_random.pt"),
        ("test_resnet", "test_resnet_random.pth"), ("fid_inception", "fid_inception_random.pth"))}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if not paths["vgg"].exists():
            torch.save(vgg16(weights=None).features.state_dict(prefix="features."), paths["vgg"])
        if not paths["facenet"].exists():
            torch.save(InceptionResnetV1(pretrained=None).state_dict(), paths["facenet"])
        if not paths["test_resnet"].exists():
            torch.save(timm.create_model("test_resnet").state_dict(), paths["test_resnet"])
        if not paths["fid_inception"].exists():
            torch.save(_random_fid_inception(), paths["fid_inception"])
    return {**paths, "lpips": shipped_lpips_weights()}


def _random_fid_inception() -> dict:
    """State dict of torch-fidelity's FID Inception with random weights (built without its download)."""
    from unittest import mock

    import torch_fidelity.feature_extractor_inceptionv3 as fx

    with mock.patch.object(fx, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fx.FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None):
        net = fx.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    return net.state_dict()
