"""Merge the results of several `headsup test` runs (one per method) into one comparison table.

    python benchmarks/collect.py runs/headsup runs/osediff runs/blending [--out comparison.md]

Each argument is a run folder (or its results.json). For every test set, one table: a row per
method, a column per metric with its direction, the best value of each column in bold (bicubic
included); the seam score (the blending artefact: 0 for an untouched image) comes first. bicubic is
listed once. Methods with the same name from different runs are labelled with their run folder.
The last lines printed are the Markdown tables (also written to --out, and a CSV next to it).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from headsup.callbacks.results import METRICS, _fmt  # noqa: E402


def load(paths: list[str]) -> tuple[dict[str, dict[str, dict]], list[str]]:
    """set -> method label -> metric values, and notes on settings that differ between runs."""
    table: dict[str, dict[str, dict]] = {}
    runs = []
    for p in paths:
        path = Path(p)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise FileNotFoundError(f"no results.json at {p}")
        runs.append((path, json.loads(path.read_text())))
    methods = [r["method"] for _, r in runs]
    notes = []
    for path, r in runs:
        label = r["method"] if methods.count(r["method"]) == 1 else f"{r['method']} ({path.parent.name})"
        for name, result in r.get("sets", {}).items():
            for method, values in result.items():
                if not isinstance(values, dict):
                    continue
                key = label if method == r["method"] else method
                table.setdefault(name, {}).setdefault(key, {**values, "_images": result.get("images")})
    first = runs[0][1].get("settings", {})
    for path, r in runs[1:]:
        for k in ("crop_border", "degradation", "psnr_ssim"):
            if r.get("settings", {}).get(k) != first.get(k):
                notes.append(f"{path}: setting '{k}' differs from {runs[0][0]}")
    return table, notes


def _order(metric: str) -> tuple:
    """seam first (the number the comparison is about), then the results files' order."""
    return (metric != "seam", list(METRICS).index(metric) if metric in METRICS else len(METRICS), metric)


def best_values(rows: dict[str, dict], metrics: list[str]) -> dict[str, float]:
    """The best value of each metric with a known direction (↑ or ↓ in its title) over a set's rows."""
    best = {}
    for m in metrics:
        title = METRICS.get(m, "")
        values = [v[m] for v in rows.values() if isinstance(v.get(m), (int, float))]
        if values and ("↑" in title or "↓" in title):
            best[m] = max(values) if "↑" in title else min(values)
    return best


def tables(table: dict, metrics: list[str] | None = None) -> tuple[str, str]:
    md, out = [], io.StringIO()
    writer = csv.writer(out)
    all_metrics = metrics or sorted({m for rows in table.values() for v in rows.values() for m in v
                                     if not m.startswith("_")}, key=_order)
    writer.writerow(["set", "method", "images", *all_metrics])
    for name, rows in table.items():
        best = best_values(rows, all_metrics)
        md += [f"### {name}", "", "| method | images | " + " | ".join(METRICS.get(m, m) for m in all_metrics) + " |",
               "|---|---|" + "---|" * len(all_metrics)]
        for method, values in rows.items():
            cells = [f"**{_fmt(m, values.get(m))}**" if m in best and values.get(m) == best[m]
                     else _fmt(m, values.get(m)) for m in all_metrics]
            md.append(f"| {method} | {values.get('_images')} | " + " | ".join(cells) + " |")
            writer.writerow([name, method, values.get("_images"), *[values.get(m, "") for m in all_metrics]])
        md.append("")
    return "\n".join(md), out.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders or results.json files")
    parser.add_argument("--metrics", nargs="*", help="columns to show (default: all found)")
    parser.add_argument("--out", help="write the Markdown here (and a .csv next to it)")
    args = parser.parse_args(argv)
    try:
        table, notes = load(args.runs)
    except FileNotFoundError as err:
        print(f"collect: error: {err}", file=sys.stderr)
        return 2
    md, csv_text = tables(table, args.metrics)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    if args.out:
        Path(args.out).write_text(md + "\n")
        Path(args.out).with_suffix(".csv").write_text(csv_text)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
