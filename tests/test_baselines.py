"""Chapter 08's claims: each reads holds / does not hold / inconclusive from the unpaired CI of
this run's numbers, and a variant that could not be scored is named, not silently dropped."""
from __future__ import annotations

import numpy as np

from autointerp import baselines, metrics
from autointerp.metrics import NAN, LatentMetrics
from autointerp.records import ScorerResult
from autointerp.rundir import RunDir
from autointerp.scorers import ScoreRun


def _run(aurocs) -> ScoreRun:
    res = [ScorerResult(latent=i, scorer="embedding", explanation=f"e{i}", examples=(),
                        metrics=LatentMetrics(latent=i, n_pos=1, n_neg=1, n_failed=0, balanced_accuracy=NAN,
                                              precision=NAN, recall=NAN, f1=NAN, auroc=float(a)))
           for i, a in enumerate(aurocs)]
    side = metrics.mean_ci(aurocs)
    return ScoreRun(res, res, metrics.PairedComparison(side, side, metrics.mean_ci([0.0] * len(aurocs)), 0.5), 0.0)


def _variant(name, aurocs=None, note=""):
    runs = {} if aurocs is None else {"embedding": _run(aurocs)}
    return baselines.VariantResult(name, "model.layers.8", 64, 8, {}, runs, {}, 1.0, note)


def test_claims_read_from_the_unpaired_ci(tmp_path):
    rng = np.random.default_rng(0)
    high = list(0.85 + 0.02 * rng.standard_normal(12))
    low = list(0.55 + 0.02 * rng.standard_normal(12))
    mixed = list(0.85 + 0.2 * rng.standard_normal(12))
    v = {"sae": _variant("sae", high), "neurons": _variant("neurons", low),
         "narrow": _variant("narrow", mixed), "mlp": _variant("mlp", high), "random_sae": _variant("random_sae", high[:3]),
         "random_model": _variant("random_model", None, "only 0 of 24 candidate latents ...")}
    rows = {r["claim"]: r for r in baselines.claims(v, RunDir(tmp_path))}
    by = {b: rows[c] for c, a, b in baselines.CLAIMS}
    assert by["neurons"]["reading"] == "holds" and by["neurons"]["effect"] > 0.25
    assert by["neurons"]["low"] > 0 and by["neurons"]["n_a"] == by["neurons"]["n_b"] == 12
    assert by["narrow"]["reading"] == "inconclusive at this scale"
    assert by["mlp"]["reading"] == "inconclusive at this scale" and abs(by["mlp"]["effect"]) < 1e-12
    assert by["random_sae"]["reading"].startswith("inconclusive (too few")
    assert by["random_model"]["reading"].startswith("not measured: random_model only 0")
    assert by["neurons"]["planted_exam"] == "not taken"
    reversed_rows = baselines.claims({"sae": _variant("sae", low), "neurons": _variant("neurons", high)},
                                     RunDir(tmp_path))
    assert reversed_rows[0]["reading"] == "does not hold (reversed)"
    text = baselines.claims_text(list(rows.values()))
    assert "HOLDS" in text and "not measured" in text and "read it with care" in text
