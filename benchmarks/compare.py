"""Run every method of a comparison config (benchmarks/compare.yaml) through `headsup test`, then
make one table of all methods, sets and metrics with the seam score beside (benchmarks/collect.py).

    python benchmarks/compare.py benchmarks/compare.yaml [--methods realesrgan gfpgan_realesrgan]

Each method runs in this process as `headsup test --config <method configs> --config <shared
configs> --data.test_sets <the concatenated set lists> --trainer.default_root_dir <out>/<method>
--trainer.logger false [--ckpt_path ...]`. A method that cannot run (its weights missing, say) is
reported and the others go on; the table holds those that ran. Relative paths in the config are
taken from the working directory, as `headsup` does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from collect import load, tables  # noqa: E402
from headsup.cli import main as headsup  # noqa: E402


def _load(path: str | Path) -> dict:
    cfg = yaml.safe_load(Path(path).read_text()) or {}
    unknown = set(cfg) - {"out", "configs", "sets", "methods"}
    if unknown or not cfg.get("methods"):
        raise ValueError(f"{path}: expected keys out, configs, sets, methods (got {sorted(cfg)})")
    return cfg


def test_sets(cfg: dict, out: Path) -> Path:
    """One file holding every set of the config's set lists (names must be unique)."""
    sets = []
    for path in cfg.get("sets", []):
        sets += yaml.safe_load(Path(path).read_text()) or []
    names = [s["name"] for s in sets]
    if len(set(names)) != len(names):
        raise ValueError(f"set names repeat across {cfg.get('sets')}: {names}")
    out.mkdir(parents=True, exist_ok=True)
    path = out / "test_sets.yaml"
    path.write_text(yaml.safe_dump(sets, sort_keys=False))
    return path


def command(name: str, spec: dict, cfg: dict, sets: Path, out: Path) -> list[str]:
    args = ["test"]
    for config in [*spec.get("configs", []), *cfg.get("configs", [])]:
        args += ["--config", str(config)]
    args += ["--data.test_sets", str(sets), "--trainer.default_root_dir", str(out / name),
             "--trainer.logger", "false", "--model.method", name]
    if spec.get("ckpt_path"):
        args += ["--ckpt_path", str(spec["ckpt_path"])]
    return args + [str(a) for a in spec.get("args", [])]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="comparison config (benchmarks/compare.yaml)")
    parser.add_argument("--methods", nargs="*", help="run only these methods of the config")
    parser.add_argument("--out", help="output folder (default: the config's `out`)")
    args = parser.parse_args(argv)
    cfg = _load(args.config)
    out = Path(args.out or cfg.get("out", "runs/compare"))
    methods = args.methods or list(cfg["methods"])
    missing = [m for m in methods if m not in cfg["methods"]]
    if missing:
        print(f"compare: error: {missing} not in {args.config} (has {list(cfg['methods'])})", file=sys.stderr)
        return 2
    sets = test_sets(cfg, out)
    failed = {}
    for name in methods:
        print(f"\n=== {name} ===", flush=True)
        try:
            code = headsup(command(name, cfg["methods"][name], cfg, sets, out))
        except SystemExit as err:  # argument errors exit through jsonargparse
            code = err.code if isinstance(err.code, int) else 2
        if code:
            failed[name] = code
    ran = [str(out / m) for m in methods if m not in failed and (out / m / "results.json").is_file()]
    if ran:
        table, notes = load(ran)
        md, csv_text = tables(table)
        (out / "comparison.md").write_text(md + "\n")
        (out / "comparison.csv").write_text(csv_text)
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        print(md)
    for name, code in failed.items():
        print(f"compare: {name} did not run (exit {code}; its error is above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
