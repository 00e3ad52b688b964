"""Effect of the inference-time LoRA scale (the fidelity-generation knob) on a trained checkpoint.

Runs a checkpoint's generator on the quickstart's portrait test crops (the HQ photos centre-cropped,
LQ made by the run's degradation, as `headsup test` does) at several `lora_scale` values and
reports PSNR-Y / SSIM-Y against HQ, plus the mean change from the trained output (scale 1).

    python benchmarks/fidelity_knob.py --ckpt runs/quickstart/checkpoints/last.ckpt \
        [--set data/samples/test/portrait] [--crop 256] [--scales 0 0.25 0.5 0.75 1 1.25]

The last output line is one JSON object.
"""

from __future__ import annotations

import argparse
import json

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--set", default="data/samples/test/portrait")
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--scales", type=float, nargs="+", default=[0, 0.25, 0.5, 0.75, 1, 1.25])
    args = parser.parse_args()
    from headsup.data.datamodule import SRDataModule
    from headsup.data.specs import DatasetSpec
    from headsup.inference.blending import CheckpointModel
    from headsup.metrics.full_reference import psnr, ssim

    gen = CheckpointModel(args.ckpt).generator
    dm = SRDataModule(test_sets=[DatasetSpec(name="portrait", hq=args.set, center_crop=args.crop)], num_workers=0)
    dm.setup("test")
    batches = [dm.on_after_batch_transfer(b, 0) for b in dm.test_dataloader()[0]]
    rows = []
    with torch.no_grad():
        outputs = {}
        for scale in args.scales:
            gen.lora_scale = scale
            outputs[scale] = [gen(b["lq"]) for b in batches]
        trained = outputs.get(1.0) or outputs[args.scales[-1]]
        for scale, srs in outputs.items():
            hqs = [b["hq"] for b in batches]
            row = {
                "lora_scale": scale,
                "psnr_y": round(float(torch.cat([psnr(s, h, gen.scale) for s, h in zip(srs, hqs)]).mean()), 2),
                "ssim_y": round(float(torch.cat([ssim(s, h, gen.scale) for s, h in zip(srs, hqs)]).mean()), 4),
                "mean_abs_change_vs_1": round(float(torch.stack([(s - t).abs().mean() for s, t in zip(srs, trained)])
                                                    .mean()), 4),
            }
            rows.append(row)
            print(row, flush=True)
    print(json.dumps({"results": rows, "checkpoint": args.ckpt, "images": len(batches)}))


if __name__ == "__main__":
    main()
