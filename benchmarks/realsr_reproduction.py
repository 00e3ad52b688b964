"""Reproduce OSEDiff's own per-image metric log on RealSR with `headsup test`'s SR-folder mode and the
paper's protocol preset, and print how close each metric comes.

    python benchmarks/realsr_reproduction.py [--data ../shared/data/realsr_osediff] [--out runs/realsr_osediff]
        [--niqe weights/pyiqa/niqe_modelparameters.mat]

Without --niqe, NIQE's pristine parameters come from basicsr's `niqe_pris_params.npz` (the same MATLAB
model), written in pyiqa's .mat layout. Metrics whose weights are not in weights/ are listed as
unavailable, with the file each needs.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import re
import sys
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from headsup.cli import main as headsup  # noqa: E402

LOG_LINE = re.compile(r"results_osediff/(\S+)\.png \| PSNR: ([\d.]+); SSIM: ([\d.]+); LPIPS: ([\d.]+); "
                      r"DISTS: ([\d.]+); CLIPIQA: ([\d.]+); NIQE: ([\d.]+); MUSIQ: ([\d.]+); MANIQA: ([\d.]+)")
# our result name -> the log's column
COLUMNS = {"psnr_y_nocrop": 0, "ssim_y_nocrop": 1, "lpips": 2, "dists": 3, "clipiqa": 4, "niqe": 5, "musiq": 6,
           "maniqa": 7}


def read_log(path: Path) -> dict[str, list[float]]:
    """Image stem -> the log's per-image values, in COLUMNS' order."""
    return {m[1]: [float(v) for v in m.groups()[1:]] for m in map(LOG_LINE.search, path.read_text().splitlines()) if m}


def niqe_from_basicsr(out: Path) -> Path:
    """pyiqa's `niqe_modelparameters.mat` layout (mu_prisparam, cov_prisparam) filled with the pristine
    parameters basicsr ships (`niqe_pris_params.npz`, the same MATLAB NIQE model), written to `out`."""
    import scipy.io

    spec = importlib.util.find_spec("basicsr")
    if spec is None:
        raise FileNotFoundError("give --niqe (pyiqa's niqe_modelparameters.mat) or install basicsr 1.4.2 "
                                "(it ships the NIQE parameters)")
    params = np.load(Path(spec.submodule_search_locations[0]) / "metrics" / "niqe_pris_params.npz")
    path = out / "niqe_modelparameters.mat"
    scipy.io.savemat(path, {"mu_prisparam": params["mu_pris_param"], "cov_prisparam": params["cov_pris_param"]})
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "realsr_osediff"))
    parser.add_argument("--out", default="runs/realsr_osediff")
    parser.add_argument("--niqe", help="pyiqa's niqe_modelparameters.mat (default: built from basicsr's)")
    args = parser.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = read_log(data / "osediff_metrics.log")
    preset = yaml.safe_load((ROOT / "benchmarks" / "protocol_paper.yaml").read_text())
    try:
        preset["model"]["metrics"]["niqe"]["init_args"]["weights"] = args.niqe or str(niqe_from_basicsr(out))
    except FileNotFoundError as err:
        print(f"realsr_reproduction: error: {err}", file=sys.stderr)
        return 2
    preset["model"]["method"] = "osediff"
    preset["data"] = {"test_sets": [{"name": "realsr", "sr": str(data / "results_osediff"),
                                     "hq": str(data / "test_HR"), "lq": str(data / "test_LR")}]}
    preset["trainer"] = {"default_root_dir": str(out)}
    config = out / "protocol.yaml"
    config.write_text(yaml.safe_dump(preset))
    code = headsup(["test", "--config", str(ROOT / "benchmarks" / "saved_outputs.yaml"), "--config", str(config),
                    "--results.overwrite", "true"])
    if code:
        return code
    with (out / "per_image.csv").open(newline="") as f:
        rows = {r["image"]: r for r in csv.DictReader(f)}
    results = json.loads((out / "results.json").read_text())
    print(f"\n{len(rows)} images of {len(log)} in the log")
    print("| metric | mean abs diff | max abs diff | our mean | log's mean of the per-image values |")
    print("|---|---|---|---|---|")
    for name, column in COLUMNS.items():
        if name not in next(iter(rows.values())) or not rows[next(iter(rows))][name]:
            print(f"| {name} | unavailable: {results['settings']['unavailable'].get(name, '?')} | | | |")
            continue
        ours = np.array([float(rows[s][name]) for s in sorted(rows)])
        theirs = np.array([log[s][column] for s in sorted(rows)])
        diff = np.abs(ours - theirs)
        print(f"| {name} | {diff.mean():.3g} | {diff.max():.3g} | {ours.mean():.4f} | {theirs.mean():.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
