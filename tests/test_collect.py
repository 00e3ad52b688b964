"""benchmarks/collect.py merges runs into one comparison table; results files round-trip."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from headsup.callbacks.results import results_csv, results_table

ROOT = Path(__file__).resolve().parents[1]


def _collect():
    spec = importlib.util.spec_from_file_location("collect", ROOT / "benchmarks" / "collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(folder: Path, method: str, psnr: float, seam: float | None = None) -> Path:
    folder.mkdir(parents=True)
    values = {"psnr_y": psnr, "ssim_y": 0.7}
    if seam is not None:
        values["seam"] = seam
    payload = {"method": method, "settings": {"crop_border": 4},
               "sets": {"portrait": {"images": 2, method: values, "bicubic": {"psnr_y": 25.0, "ssim_y": 0.6}}}}
    (folder / "results.json").write_text(json.dumps(payload))
    return folder


def test_collect_builds_one_table_from_two_runs(tmp_path, capsys):
    a = _run(tmp_path / "ours", "headsup", 27.5, seam=0.01)
    b = _run(tmp_path / "blend", "blending", 27.1, seam=0.20)
    collect = _collect()
    assert collect.main([str(a), str(b / "results.json"), "--out", str(tmp_path / "cmp.md")]) == 0
    md = (tmp_path / "cmp.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert [r.split(" | ")[0] for r in rows] == ["| headsup", "| bicubic", "| blending"]  # bicubic once
    assert "Seam ↓" in md and "PSNR-Y (dB) ↑" in md and "n/a" in rows[1]  # bicubic has no seam here
    # the best of each column in bold (higher PSNR/SSIM, lower seam), the seam column first
    assert rows[0].startswith("| headsup | 2 | **0.0100** | **27.50** | **0.7000** |")
    assert rows[2].startswith("| blending | 2 | 0.2000 | 27.10 | **0.7000** |") and "**" not in rows[1]
    csv_lines = (tmp_path / "cmp.csv").read_text().splitlines()
    assert csv_lines[0] == "set,method,images,seam,psnr_y,ssim_y" and len(csv_lines) == 4
    same = _run(tmp_path / "again", "headsup", 26.0)  # two runs of one method get their folders as labels
    table, _ = collect.load([str(a), str(same)])
    assert {"headsup (ours)", "headsup (again)"} <= set(table["portrait"])
    assert collect.main([str(tmp_path / "missing")]) == 2


def test_results_files_round_trip():
    sets = {"portrait": {"images": 2, "headsup": {"psnr_y": 27.123456, "ssim_y": 0.71}}}
    lines = results_csv(sets).splitlines()
    assert lines == ["set,method,images,psnr_y,ssim_y", "portrait,headsup,2,27.123456,0.71"]
    assert "| portrait | headsup | 2 | 27.12 | 0.7100 |" in results_table(sets)
