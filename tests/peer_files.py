"""Randomly initialised peers saved as their releases save them (file name, top-level key, the key
names of the code the release came from), so that `PeerModel` meets the layout a user's real file has.

Real-ESRGAN, realesr-general and SwinIR are built with basicsr 1.4.2's own architectures (the code
those releases were trained and saved with); GFPGAN (v1 clean) and CodeFormer with spandrel's copies,
whose parameter names are the official ones.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tests.conftest import basicsr_reference

# release file name -> top-level key of its state dict
RELEASES = {
    "realesrgan": ("RealESRGAN_x4plus.pth", "params_ema"),
    "realesr_general": ("realesr-general-x4v3.pth", "params"),
    "swinir": ("003_realSR_BSRGAN_DFO_s64w8_SwinIR-M_x4_GAN.pth", "params_ema"),
    "gfpgan": ("GFPGANv1.4.pth", "params_ema"),
    "codeformer": ("codeformer.pth", "params_ema"),
}


def build(kind: str) -> torch.nn.Module:
    """The release's network with random weights."""
    if kind == "realesrgan":
        basicsr_reference()  # makes basicsr 1.4.2 importable (or skips/fails with the reason)
        from basicsr.archs.rrdbnet_arch import RRDBNet

        return RRDBNet(num_in_ch=3, num_out_ch=3, num_feat=64, num_block=23, num_grow_ch=32, scale=4)
    if kind == "realesr_general":
        basicsr_reference()  # makes basicsr 1.4.2 importable (or skips/fails with the reason)
        from basicsr.archs.srvgg_arch import SRVGGNetCompact

        return SRVGGNetCompact(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=32, upscale=4, act_type="prelu")
    if kind == "swinir":
        basicsr_reference()  # makes basicsr 1.4.2 importable (or skips/fails with the reason)
        from basicsr.archs.swinir_arch import SwinIR

        return SwinIR(upscale=4, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6] * 6,
                      embed_dim=180, num_heads=[6] * 6, mlp_ratio=2, upsampler="nearest+conv",
                      resi_connection="1conv")
    if kind == "gfpgan":
        from spandrel.architectures.GFPGAN import GFPGAN

        return GFPGAN(out_size=512, num_style_feat=512, channel_multiplier=2, decoder_load_path=None,
                      fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True, narrow=1, sft_half=True)
    if kind == "codeformer":
        from spandrel_extra_arches.architectures.CodeFormer import CodeFormer

        return CodeFormer(dim_embd=512, codebook_size=1024, n_head=8, n_layers=9,
                          connect_list=["32", "64", "128", "256"])
    raise KeyError(kind)


def save_release(kind: str, folder: Path, seed: int = 0) -> Path:
    """`folder/<release file name>` holding a random `kind` network under the release's key."""
    name, key = RELEASES[kind]
    torch.manual_seed(seed)
    net = build(kind)
    path = Path(folder) / name
    torch.save({key: net.state_dict()}, path)
    return path
