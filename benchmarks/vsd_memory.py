"""Parameter memory of VSD's score networks: one shared UNet (teacher = adapters off, fake score
= LoRA on) vs the two UNet copies OSEDiff holds (a frozen teacher and a LoRA-tuned copy).

Counts parameters of the SD 2.1-base UNet architecture built on the meta device (no weights
are allocated), with the fake score's default LoRA (rank 4 on the UNet targets).

    python benchmarks/vsd_memory.py [--rank 4]

The last output line is one JSON object (bytes for bf16 weights and fp32 LoRA).
"""

from __future__ import annotations

import argparse
import json

import torch
from diffusers import UNet2DConditionModel

from headsup.models.backbone import SD21_BASE_UNET
from headsup.models.lora import UNET_TARGETS, LoRASpec, add_lora


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=4)
    args = parser.parse_args()
    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD21_BASE_UNET)
        base = sum(p.numel() for p in unet.parameters())
        add_lora(unet, LoRASpec(rank=args.rank, alpha=float(args.rank), targets=list(UNET_TARGETS)), "fake_score")
    lora = sum(p.numel() for n, p in unet.named_parameters() if "lora_" in n)
    shared = 2 * base + 4 * lora          # bf16 base weights, fp32 LoRA
    two_copies = 2 * (2 * base) + 4 * lora
    print(f"UNet {base / 1e6:.1f}M parameters, fake-score LoRA {lora / 1e6:.2f}M")
    print(json.dumps({"unet_params": base, "lora_params": lora, "shared_bytes": shared,
                      "two_copies_bytes": two_copies, "saved_bytes": two_copies - shared,
                      "saved_gib": round((two_copies - shared) / 2**30, 3)}))


if __name__ == "__main__":
    main()
