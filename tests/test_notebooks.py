"""Every numbered notebook executes end-to-end under papermill on the smoke profile, in order,
into one shared run directory (each chapter reads what the previous one wrote)."""
from __future__ import annotations

import json

import nbformat
import pytest

from autointerp import results, run

NOTEBOOKS = run.notebooks()
EXPECTED = {  # files a chapter must leave in the run directory
    "00": ["run.json", "sae/cfg.json", "sae/sae_weights.safetensors", "sae/train_report.json"],
    "01": ["cache/tokens.npy", "cache/index/ptr.npy", "cache/stats.npz", "cache/summary.json"],
    "02": ["examples.jsonl", "explanations.jsonl"],
    "03": ["scores/detection.jsonl", "scores/detection_validity.jsonl", "scores/intruder.jsonl",
           "scores/intruder_embedding.jsonl"],
    "04": ["scores/fuzzing.jsonl", "scores/fuzzing_active.jsonl", "scores/simulation.jsonl"],
    "05": ["scores/surprisal.jsonl", "scores/surprisal_validity.jsonl"],
    "06": ["scores/embedding.jsonl", "scores/embedding_validity.jsonl"],
    "07": ["scores/intervention.jsonl"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke_run")


def test_committed_notebooks_are_clean_and_parametrised():
    assert [p.name[:2] for p in NOTEBOOKS][:2] == ["00", "01"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert "profile" in code[0].source and "run_dir" in code[0].source, path.name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_on_smoke_profile(notebook, run_dir):
    run.run("smoke", run_dir, only=[notebook.name[:2]], cell_timeout_s=600)  # a hang fails, not stalls
    executed = nbformat.read(run_dir / "notebooks" / notebook.name, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    for rel in EXPECTED.get(notebook.name[:2], []):
        assert (run_dir / rel).exists(), f"{notebook.name} did not write {rel}"
    check_results_files(run_dir)
    if notebook.name.startswith("00"):
        cfg = json.loads((run_dir / "run.json").read_text())
        assert cfg["config"]["profile"] == "smoke" and cfg["provenance"]["packages"]["torch"]


def check_results_files(run_dir) -> None:
    """Every results file the run has written so far reads with the one reader, names its schema
    and loads into pandas in one call."""
    files = sorted(run_dir.glob("*.jsonl")) + sorted((run_dir / "scores").glob("*.jsonl"))
    for path in files:
        header, records = results.read(path)
        assert header["schema"] == results.schema_id(header["kind"]), path
        assert header["provenance"]["packages"]["torch"], path
        assert len(results.frame(path)) == len(records), path
    assert not list(run_dir.rglob("*.tmp")), "a write was left half-done"
