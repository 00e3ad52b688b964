"""The notebooks run end to end on the tiny settings (nbclient) and are stored without outputs."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def execute(path: Path, parameters: str | None = None, timeout: int = 1200,
            stop_after: str | None = None) -> nbformat.NotebookNode:
    """Run a notebook from the notebooks folder; `parameters` (code) goes in a cell right after the
    cell tagged "parameters", as papermill injects them; `stop_after`: run only up to the first
    cell containing this text. A failing cell raises CellExecutionError."""
    nb = nbformat.read(path, as_version=4)
    if stop_after:
        nb.cells = nb.cells[: next(i for i, c in enumerate(nb.cells) if stop_after in c.source) + 1]
    if parameters:
        at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
        nb.cells.insert(at + 1, nbformat.v4.new_code_cell(parameters))
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    return nb


@pytest.fixture(autouse=True)
def inline_figures(monkeypatch):
    """The kernel shows figures as outputs (a non-interactive MPLBACKEND such as Agg would drop them)."""
    monkeypatch.delenv("MPLBACKEND", raising=False)


def figures(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_both_notebooks_exist_without_stored_outputs():
    assert {p.name for p in NOTEBOOKS} >= {"ablations.ipynb", "degradations.ipynb"}
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{path.name} has outputs"
        assert any("parameters" in c.metadata.get("tags", []) for c in code), f"{path.name}: no parameters cell"


def test_degradation_gallery_runs():
    nb = execute(ROOT / "notebooks" / "degradations.ipynb")
    assert figures(nb) == 5  # stages, kernels, histograms, face preset, throughput
    text = "".join(out.get("text", "") for cell in nb.cells for out in cell.get("outputs", []))
    assert "configured" in text and "plateau_iso" in text


ALL_VARIANTS = ("full", "no face supervision", "no identity loss", "no reference")


@pytest.mark.parametrize("variants", [
    ("full",),  # default run: every part of the notebook on the variant with every term (the cluster test
    # checks all four configs); comparing variants side by side is the slow runs' job
    pytest.param(("full", "no reference"), marks=pytest.mark.slow),
    pytest.param(ALL_VARIANTS, marks=pytest.mark.slow),
], ids=["one", "two", "four"])
def test_ablation_notebook_trains_tests_and_reads_the_variants(tmp_path, samples_dir, tiny_sd_dir, tiny_weights,
                                                                variants):
    from headsup.testing.recipes import prepare_tiny_portrait_set

    inputs = {"samples": samples_dir, "backbone": tiny_sd_dir, "weights": tiny_weights,
              "portraits": prepare_tiny_portrait_set(samples_dir)}
    work = tmp_path / "ablations"
    plain = {k: str(v) if isinstance(v, Path) else {n: str(p) for n, p in v.items()} for k, v in inputs.items()}
    nb = execute(ROOT / "notebooks" / "ablations.ipynb", "\n".join([
        f"WORK = {str(work)!r}",
        f"TINY_INPUTS = {plain!r}",
        'OVERRIDES = ["--trainer.max_steps", "3", "--trainer.val_check_interval", "1000"]',
        f"VARIANTS = {{name: VARIANTS[name] for name in {list(variants)!r}}}",
        "TEST_SETS[0][\"center_crop\"] = 256",
    ]))
    runs = {name.replace(" ", "_"): work / name.replace(" ", "_") for name in variants}
    for name, run in runs.items():
        sets = json.loads((run / "results.json").read_text())["sets"]
        assert set(sets) == {"portrait", "general"} and sets["portrait"]["images"] == 2, name
        assert (run / "test_images" / "portrait" / "astronaut.png").is_file()
        assert list(run.glob("events.out.tfevents.*")), name
    configs = {name: yaml.safe_load((work / "configs" / f"{name}.yaml").read_text()) for name in runs}
    face = {"face_mse", "face_lpips", "identity", "face_gan"}
    assert face <= set(configs["full"]["model"]["objectives"])
    assert configs["full"]["model"]["generator"]["init_args"]["reference"] is True
    if "no_reference" in configs:
        assert configs["no_reference"]["model"]["generator"]["init_args"]["reference"] is False
    if "no_identity_loss" in configs:
        assert not face & set(configs["no_face_supervision"]["model"]["objectives"])
        assert set(configs["full"]["model"]["objectives"]) - set(configs["no_identity_loss"]["model"]["objectives"]) \
            == {"identity"}
    assert figures(nb) == 3  # loss curves, metric bars, SR crops with the face zoomed


def test_ablation_notebook_writes_cluster_configs_the_cli_accepts(tmp_path, capsys):
    """With a real experiment config (TINY off), the variant configs it writes for cluster jobs
    parse with the real CLI parser and differ only where the variant says."""
    from headsup.cli import build_cli

    work = tmp_path / "cluster"
    execute(ROOT / "notebooks" / "ablations.ipynb", "\n".join([
        'BASE_CONFIG = "configs/experiments/headsup_portrait.yaml"', "TINY = False", "TRAIN = False",
        f"WORK = {str(work)!r}",
        'TEST_SETS = [{"name": "portrait", "hq": "/data/portrait_test", "kind": "portrait"}]',
    ]), stop_after="configs[name] = path")
    written = sorted((work / "configs").glob("*.yaml"))
    assert [p.stem for p in written] == ["full", "no_face_supervision", "no_identity_loss", "no_reference"]
    for path in written:
        with pytest.raises(SystemExit) as exit_:
            build_cli(["fit", "--config", str(path), "--print_config"])
        assert exit_.value.code == 0, capsys.readouterr().err
        cfg = yaml.safe_load(path.read_text())
        assert cfg["trainer"]["default_root_dir"] == str(work / path.stem)
        assert cfg["trainer"]["callbacks"][0]["init_args"]["dirpath"] == str(work / path.stem / "checkpoints")
        assert cfg["data"]["test_sets"] == [{"name": "portrait", "hq": "/data/portrait_test", "kind": "portrait"}]
