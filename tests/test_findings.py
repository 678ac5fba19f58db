"""The regression check fails when a watched number moves past its tolerance, says which number
moved and how to refresh the baseline, and passes inside the tolerance."""
from __future__ import annotations

import json

import pytest

from autointerp import findings, metrics, results
from autointerp.rundir import RunDir


@pytest.fixture()
def run_dir(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.sae_dir.mkdir(parents=True)
    (rd.sae_dir / "train_report.json").write_text(json.dumps({"fvu": 0.15, "frac_alive": 0.88}))
    rd.cache_dir.mkdir()
    results.write_json(rd.cache_summary, {"stats": {"frac_alive": 0.96}})
    diff = metrics.MeanWithCI(0.24, 0.23, 0.25, 768, 0, 2000)
    results.write(rd.scores("alignment"), "scores", [{"pair": "random_floor", "kind": "random_floor", "mean_similarity": 0.113}],
                  scorer="alignment", resid_minus_mlp_gap1=diff, verdict=metrics.verdict(diff))
    return rd


def test_moving_a_number_past_its_tolerance_fails_and_names_it(run_dir, tmp_path):
    base = findings.refresh(run_dir, tmp_path / "baseline.json")
    doc = json.loads(base.read_text())
    assert doc["metrics"]["sae.fvu"] == {"value": 0.15, "tolerance": 0.05, "why": findings.TOLERANCE["sae.fvu"][1]}
    claim = "effect: adjacent residual SAEs are more alike than adjacent MLP SAEs (matched cosine)"
    assert doc["metrics"][claim]["value"] == 0.24
    assert findings.check(run_dir, base) == []
    doc["metrics"]["sae.fvu"]["value"] = 0.15 + 0.04  # inside the tolerance: still fine
    base.write_text(json.dumps(doc))
    assert findings.check(run_dir, base) == []
    doc["metrics"]["sae.fvu"]["value"] = 0.15 + 0.06  # past it
    doc["metrics"]["gone.metric"] = {"value": 1.0, "tolerance": 0.1, "why": "test"}
    base.write_text(json.dumps(doc))
    drifts = findings.check(run_dir, base)
    assert {d.name for d in drifts} == {"sae.fvu", "gone.metric"}
    text = findings.check_text(drifts, base)
    assert "sae.fvu: 0.2100 -> 0.1500" in text and "not in this run" in text and "--refresh" in text


def test_claims_read_not_measured_when_a_chapter_did_not_run(run_dir):
    rows = {r["chapter"]: r for r in findings.collect(run_dir)}
    assert rows["09"]["reading"] == "holds" and rows["09"]["exam_passed"]
    assert rows["07"]["reading"].startswith("not measured: run notebooks/07")
    assert rows["08"]["reading"].startswith("not measured: run notebooks/08")
    assert not rows["07"]["exam_passed"]
