"""OneStepSR: shapes, what trains, local-folder loading, full-size architecture on the meta device."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel

from headsup.models.backbone import SD21_BASE_UNET, SD21_BASE_VAE, DiffusersFolder
from headsup.models.generator import OneStepSR
from headsup.models.lora import LoRASpec, add_lora, resolve_targets
from headsup.testing.tiny import TinySD


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return OneStepSR(TinySD())


def test_x4_output_shape_exact_for_odd_sizes(generator):
    for h, w in [(16, 16), (13, 17), (9, 30), (1, 1), (2, 3)]:
        with torch.no_grad():
            out = generator(torch.rand(2, 3, h, w))
        assert out.shape == (2, 3, 4 * h, 4 * w)
        assert 0 <= out.min() and out.max() <= 1


def test_gradients_reach_lora_and_conv_in_only(generator):
    generator.zero_grad(set_to_none=True)
    generator(torch.rand(1, 3, 8, 8)).mean().backward()
    with_grad = {n for n, p in generator.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in generator.named_parameters() if p.requires_grad}
    assert with_grad, "no gradient reached any parameter"
    assert with_grad <= trainable
    assert all("lora_" in n or n.startswith("unet.conv_in.") for n in trainable)
    # conv_in: LoRA-wrapped (OSEDiff's targets) and fully trained
    assert {"unet.conv_in.base_layer.weight", "unet.conv_in.base_layer.bias"} <= trainable
    assert any(n.startswith("vae.encoder.") and "lora_" in n for n in trainable)
    assert not any(n.startswith(("vae.decoder.", "vae.post_quant_conv.")) for n in trainable)
    assert not generator.vae.decoder.training


def test_lora_starts_as_identity():
    torch.manual_seed(0)
    lq = torch.rand(1, 3, 8, 8)
    plain = TinySD().build()
    gen = OneStepSR(TinySD())
    with torch.no_grad():
        z = plain.vae.encode(torch.nn.functional.interpolate(lq, scale_factor=4, mode="bicubic").clamp(0, 1) * 2 - 1)
        z = z.latent_dist.mode() * plain.vae.config.scaling_factor
        assert torch.allclose(gen.encode(lq), z, atol=1e-5)


def test_clean_latent_from_epsilon(generator):
    # with the UNet's prediction forced to eps, z0 = (z - sqrt(1 - abar) eps) / sqrt(abar) exactly
    z = torch.randn(1, 4, 8, 8)
    eps = torch.randn_like(z)
    a = generator.alpha_bar
    unet_forward = generator.unet.forward
    generator.unet.forward = lambda *args, **kw: type("O", (), {"sample": eps})()
    try:
        z0 = generator.denoise(z)
    finally:
        generator.unet.forward = unet_forward
    assert torch.allclose(z0, (z - (1 - a).sqrt() * eps) / a.sqrt())
    assert 0 < float(a) < 0.01  # abar at t=999 of SD's schedule


def test_save_pretrained_then_load_local_folder(tmp_path):
    parts = TinySD(seed=3).build()
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    loaded = DiffusersFolder(str(tmp_path)).build()
    for a, b in [(parts.unet, loaded.unet), (parts.vae, loaded.vae)]:
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert loaded.prediction_type == "epsilon"
    assert loaded.prompt_embeds.shape == (1, 77, parts.unet.config.cross_attention_dim)
    gen = OneStepSR(DiffusersFolder(str(tmp_path)))
    assert gen(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


def test_missing_backbone_folder_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        DiffusersFolder(str(tmp_path / "nowhere")).build()
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="unet"):
        DiffusersFolder(str(tmp_path / "half")).build()


def test_misspelt_lora_target_fails():
    with pytest.raises(ValueError, match="match no module"):
        OneStepSR(TinySD(), unet_lora=LoRASpec(targets=["to_qq"]))


def test_full_size_sd21_base_on_meta_device():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
        vae = AutoencoderKL(**SD21_BASE_VAE)
    n_unet = sum(p.numel() for p in unet.parameters())
    n_vae = sum(p.numel() for p in vae.parameters())
    assert abs(n_unet - 865.9e6) < 0.5e6, n_unet
    assert abs(n_vae - 83.65e6) < 0.5e6, n_vae
    # OSEDiff's released target rules select 258 UNet modules (conv_in among them, no time_emb_proj)
    # and 32 VAE modules (encoder + quant_conv); the fake score's effective mid-block adapter has 16
    # (counts from a line-by-line reading of OSEDiff's osediff.py on SD 2.1-base, issue 16)
    unet_names = resolve_targets(unet, "osediff_unet")
    assert len(unet_names) == 258 and "conv_in" in unet_names and "conv_out" in unet_names
    assert not any("time_emb" in n or "time_embedding" in n for n in unet_names)
    vae_names = resolve_targets(vae, "osediff_vae_encoder")
    assert len(vae_names) == 32 and {"encoder.conv_in", "quant_conv"} <= set(vae_names)
    assert all(n.startswith("encoder.") or n == "quant_conv" for n in vae_names)
    assert len(resolve_targets(unet, "osediff_unet", "mid_block.")) == 16
    # earlier headsup lists, kept as presets: 279 (with time_emb_proj, without conv_in) and 30
    old = resolve_targets(unet, "headsup_unet")
    assert len(old) == 279 and "conv_in" not in old and set(old) - set(unet_names) == {
        n for n in old if n.endswith("time_emb_proj")}
    assert len(resolve_targets(vae, "headsup_vae_encoder", "encoder.")) == 30
    names = add_lora(unet, LoRASpec(rank=4))
    lora_params = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    assert names == unet_names
    assert 1e6 < lora_params < 2e7, lora_params


def test_vae_lora_that_reaches_the_decoder_is_refused():
    with pytest.raises(ValueError, match="decoder"):
        OneStepSR(TinySD(), vae_lora=LoRASpec(targets=["conv1"]))  # no prefix: encoder and decoder convs


def test_sd_turbo_layout_with_euler_scheduler(tmp_path):
    from diffusers import DDPMScheduler, EulerDiscreteScheduler

    from headsup.models.backbone import SD_SCHEDULER

    parts = TinySD().build()
    parts.unet.save_pretrained(tmp_path / "unet")
    parts.vae.save_pretrained(tmp_path / "vae")
    EulerDiscreteScheduler(**SD_SCHEDULER, timestep_spacing="trailing").save_pretrained(tmp_path / "scheduler")
    loaded = DiffusersFolder(str(tmp_path)).build()
    assert torch.allclose(loaded.alphas_cumprod, DDPMScheduler(**SD_SCHEDULER).alphas_cumprod)
    assert loaded.prediction_type == "epsilon"


def test_merged_lora_equals_unmerged_and_unmerges_for_training():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), merge_lora=True)
    with torch.no_grad():  # give the adapters non-zero updates
        for name, p in gen.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    lq = torch.rand(1, 3, 8, 8)
    gen.eval()
    gen.merge_lora = False
    with torch.no_grad():
        unmerged = gen(lq)
        gen.merge_lora = True
        merged = gen(lq)
    assert gen._merged and torch.allclose(merged, unmerged, atol=1e-4)
    gen.train()
    assert not gen._merged
    with torch.no_grad():
        gen.eval()
        gen.merge_lora = False
        assert torch.allclose(gen(lq), unmerged, atol=1e-5)  # base weights are back as they were


def test_lora_scale_moves_between_the_pretrained_and_the_trained_unet():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD())
    for name, p in gen.unet.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained-looking adapter
    gen.eval()
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        full = gen(lq)
        gen.unet.disable_adapters()
        base = gen(lq)
        gen.unet.enable_adapters()
        outputs = {}
        for scale in (0.0, 0.5):
            gen.lora_scale = scale
            outputs[scale] = gen(lq)
        gen.merge_lora = True
        merged_half = gen(lq)
    assert torch.allclose(outputs[0.0], base, atol=1e-5)  # 0: the pretrained UNet (trained conv_in kept)
    assert not torch.allclose(full, base, atol=1e-3)
    d_half, d_full = (outputs[0.5] - base).abs().mean(), (full - base).abs().mean()
    assert 0 < d_half < d_full  # in between
    assert torch.allclose(merged_half, outputs[0.5], atol=1e-4)  # scaling and merging compose
    gen.merge_lora = False
    gen.train()  # training always sees the adapter as trained
    assert gen._lora_scale_applied == 1.0 and not gen._merged
    with torch.no_grad():
        gen.eval()
        gen.lora_scale = 1.0
        assert torch.allclose(gen(lq), full, atol=1e-5)


def test_reference_strength_zero_is_no_reference():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), reference=True).eval()
    with torch.no_grad():
        extra = gen.unet.conv_in.weight[:, gen.latent_channels:]
        extra.copy_(torch.randn_like(extra))
    lq = torch.rand(1, 3, 16, 16)
    landmarks = torch.tensor([[[20.0, 25], [44, 25], [32, 35], [22, 48], [42, 48]]])
    cond = dict(reference=torch.rand(1, 3, 32, 32), landmarks=landmarks, face_mask=torch.ones(1, 1, 64, 64))
    with torch.no_grad():
        with_ref = gen(lq, **cond)
        gen.reference_strength = 0.0
        zero = gen(lq, **cond)
        without = gen(lq, face_mask=cond["face_mask"])
    assert torch.equal(zero, without) and not torch.allclose(with_ref, without, atol=1e-4)


def test_channels_last_gives_the_same_output():
    torch.manual_seed(0)
    gen = OneStepSR(TinySD()).eval()
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        plain = gen(lq)
        gen.channels_last = True
        fast = gen(lq)
    assert gen.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast, plain, atol=1e-4)


def test_cuda_graphs_option_leaves_cpu_and_training_calls_eager():
    """Graph recording needs CUDA and an inference call; elsewhere the option changes nothing
    (the recorded path itself is checked in tests/test_gpu.py, on a GPU)."""
    torch.manual_seed(0)
    gen = OneStepSR(TinySD(), cuda_graphs=True).eval()
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        out = gen(lq)
        gen.cuda_graphs = False
        plain = gen(lq)
    assert gen._graph is None and torch.equal(out, plain)
    gen.train()
    gen.cuda_graphs = True
    assert gen(lq).requires_grad and gen._graph is None


@pytest.mark.slow
def test_compiled_generator_gives_the_same_output():  # about a minute of inductor compilation on the CPU
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    gen = OneStepSR(TinySD()).eval()
    lq = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        plain = gen(lq)
        gen.compile = True
        torch._dynamo.reset()
        counters.clear()
        compiled = gen(lq)
    assert gen._compiled and torch.allclose(compiled, plain, atol=1e-4)
    # every stage ran compiled: the UNet, and the VAE's encoder and decoder that encode()/decode() call
    # (compiling the VAE module itself would only cover AutoencoderKL.forward, which nothing calls)
    assert [m._compiled_call_impl is not None for m in (gen.unet, gen.vae.encoder, gen.vae.decoder)] == [True] * 3
    assert counters["stats"]["unique_graphs"] >= 3
    assert all(not k.startswith("_orig_mod") for k in gen.state_dict())  # checkpoints keep their keys


def test_unet_attention_runs_through_scaled_dot_product_attention(generator, monkeypatch):
    """The UNet's attention uses diffusers' default processor, AttnProcessor2_0, i.e. PyTorch's SDPA."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    processors = generator.unet.attn_processors
    assert processors and all(isinstance(p, AttnProcessor2_0) for p in processors.values())
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                        lambda *a, **kw: calls.append(a[0].shape) or sdpa(*a, **kw))
    with torch.no_grad():
        generator(torch.rand(1, 3, 16, 16))
    assert len(calls) == len(processors)  # every attention layer went through it


def test_validation_end_takes_merged_lora_out_before_checkpoints_and_ema():
    """With merge_lora, validation folds the LoRA into the base weights; by the end of validation
    (before ModelCheckpoint and the EMA act) the trained tensors are the unmerged ones again."""
    from headsup.system import SRSystem

    torch.manual_seed(0)
    system = SRSystem(OneStepSR(TinySD(), merge_lora=True))
    with torch.no_grad():
        for name, p in system.generator.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)  # a trained-looking adapter, so merging changes the base weights
    trained = {k: v.clone() for k, v in system.generator.state_dict().items()}
    system.eval()
    with torch.no_grad():
        system.generator(torch.rand(1, 3, 16, 16))
    assert system.generator._merged
    assert not torch.equal(system.generator.unet.conv_in.base_layer.weight, trained["unet.conv_in.base_layer.weight"])
    system.on_validation_epoch_end()
    for key, value in system.generator.state_dict().items():
        assert torch.allclose(value, trained[key], atol=1e-6), key


def test_random_training_upsampling_draws_each_mode():
    """OSEDiff's training LQ is upsampled with area, bilinear or bicubic, drawn per batch; evaluation
    keeps `upsample`."""
    import torch.nn.functional as F

    gen = OneStepSR(TinySD(), train_upsample="random").train()
    gen.seed(3)
    lq = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    candidates = {"area": F.interpolate(lq, scale_factor=4, mode="area"),
                  "bilinear": F.interpolate(lq, scale_factor=4, mode="bilinear", align_corners=False),
                  "bicubic": F.interpolate(lq, scale_factor=4, mode="bicubic", align_corners=False)}
    def draws():
        out = []
        for _ in range(30):
            up = gen.upsampled(lq)
            out.append([m for m, c in candidates.items() if torch.equal(up, c)])
        return out

    drawn = draws()
    assert all(len(d) == 1 for d in drawn) and {d[0] for d in drawn} == set(candidates)
    gen.seed(3)
    assert draws() == drawn  # the rank's seeded generator: reproducible
    gen.eval()
    assert torch.equal(gen.upsampled(lq), candidates["bicubic"])  # evaluation: `upsample`
    with pytest.raises(ValueError, match="train_upsample"):
        OneStepSR(TinySD(), train_upsample="nearest")
