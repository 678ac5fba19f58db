"""Chapter 08's claims: each reads holds / does not hold / inconclusive from the unpaired CI of
this run's numbers, and a variant that could not be scored is named, not silently dropped."""
from __future__ import annotations

import numpy as np
import pytest

from autointerp import baselines, metrics, scoring
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


def _scored(name, values, metric):
    res = [ScorerResult(latent=i, scorer=name, explanation=f"e{i}", examples=(),
                        metrics=LatentMetrics(latent=i, n_pos=1, n_neg=1, n_failed=0, balanced_accuracy=NAN,
                                              precision=NAN, recall=NAN, f1=NAN, **{"auroc": NAN, metric: float(v)}))
           for i, v in enumerate(values)]
    side = metrics.mean_ci(values)
    return ScoreRun(res, res, metrics.PairedComparison(side, side, metrics.mean_ci([0.0] * len(values)), 0.5),
                    0.0, metric)


def test_intervention_claims_are_in_nats_and_a_missing_scorer_is_named(tmp_path):
    sae = baselines.VariantResult("sae", "model.layers.8", 64, 8, {},
                                  {"intervention": _scored("intervention", [2.0, 2.2, 1.9, 2.1, 2.05, 1.95], "mean_score")},
                                  {}, 1.0)
    rnd = baselines.VariantResult("random_sae", "model.layers.8", 64, 8, {},
                                  {"intervention": _scored("intervention", [0.1, -0.1, 0.0, 0.05, -0.05, 0.02], "mean_score")},
                                  {}, 1.0)
    neurons = baselines.VariantResult("neurons", "x.input", 64, 8, {}, {"embedding": _scored("embedding", [0.6] * 6, "auroc")},
                                      {}, 1.0, missing={"intervention": "Only 1 latent(s) could be steered"})
    rows = baselines.claims({"sae": sae, "random_sae": rnd, "neurons": neurons}, RunDir(tmp_path))
    by = {(r["claim"].split()[0] + r["claim"].split()[-1], r["scorer"]): r for r in rows}
    iv_row = next(r for r in rows if r["scorer"] == "intervention" and "random SAE" in r["claim"])
    assert iv_row["metric"] == "mean_score" and iv_row["effect"] > 1.5 and iv_row["reading"] == "holds"
    assert iv_row["planted_exam"] == "not taken"  # chapter 07's known answer is its exam; 07 did not run here
    missing = next(r for r in rows if "neurons" in r["claim"] and r["scorer"] == "intervention")
    assert missing["reading"] == "not measured: Only 1 latent(s) could be steered" and by
    text = baselines.claims_text(rows)
    assert "nats" in text and "not measured: Only 1 latent" in text
    table = baselines.table({"sae": sae, "neurons": neurons})
    assert "not scored: Only 1 latent" in table.loc[("intervention", "neurons"), "verdict"]


def test_judges_join_only_after_passing_their_planted_exam(tmp_path):
    from autointerp import results

    rd = RunDir(tmp_path)
    knobs = {"scorers": ("embedding", "intervention"), "judges": ("detection", "fuzzing"), "judges_when": "exam passed"}
    names, left_out = baselines.plan(rd, knobs)
    assert names == ["embedding", "intervention"] and set(left_out) == {"detection", "fuzzing"}
    assert "'not taken'" in left_out["detection"] and "judges_when='always'" in left_out["detection"]
    results.write(rd.validity("detection"), "validity", [], verdict="separates planted latents from others")
    results.write(rd.validity("fuzzing"), "validity", [], verdict="at chance on planted latents")
    names, left_out = baselines.plan(rd, knobs)
    assert names == ["embedding", "intervention", "detection"] and list(left_out) == ["fuzzing"]
    names, left_out = baselines.plan(rd, {**knobs, "judges_when": "always"})
    assert names[-2:] == ["detection", "fuzzing"] and not left_out
    with pytest.raises(ValueError, match="need a judge"):
        scoring.make_scorers(["embedding", "detection"], None, None)
    with pytest.raises(ValueError, match="Unknown scorer"):
        scoring.make_scorers(["embeddings"], None, None)


class _Reader:
    """Just what ``candidates`` reads of a cache: stats, ctx_len, first_pos and a latent's non-zeros."""

    def __init__(self, flats: dict[int, np.ndarray], n_rows: int, ctx_len: int) -> None:
        from autointerp.cache import LatentStats

        d = max(flats) + 1
        count = np.array([flats.get(j, np.array([])).size for j in range(d)])
        n_tokens = n_rows * (ctx_len - 1)
        self.stats = LatentStats(count, count.astype(float), count.astype(float), np.zeros(d), n_tokens)
        self.ctx_len, self.flats = ctx_len, flats
        self.manifest = type("M", (), {"first_pos": 1})()

    def latent(self, j):
        return self.flats[j], np.ones(self.flats[j].size, np.float32)


def test_candidates_skip_latents_that_fire_in_one_stretch_of_one_row():
    ctx, n_rows = 64, 100
    flats = {0: np.arange(3 * ctx + 1, 3 * ctx + 60),  # 59 tokens, all in row 3: at most 2 windows of 32
             1: np.array([r * ctx + 5 for r in range(0, 100, 2)]),  # one token in each of 50 rows
             2: np.arange(10 * ctx, 60 * ctx)}  # 50 whole rows: fires on half the tokens (too dense)
    reader = _Reader(flats, n_rows, ctx)
    assert baselines.candidates(reader, 3, min_windows=20, width=32, max_rate=0.2) == [1]
    assert baselines.candidates(reader, 3, min_windows=20, width=32, max_rate=0.6) == [1, 2]
    assert baselines.candidates(reader, 3, min_windows=60, width=32, max_rate=0.2) == []


def test_sources_replace_training_for_variants_and_the_family(tmp_path, subject, rows):
    """A variant or family SAE named in ``sources`` is loaded from that spec (an sae-lens folder here,
    a release on the full profile) with ``{layer}`` filled in; nothing is trained for it."""
    from autointerp import layers, saes
    from autointerp.config import RunConfig

    for l in range(1, 5):
        for kind, hook in (("r", f"model.layers.{l}"), ("m", f"model.layers.{l}.mlp")):
            saes.random_sae(576, 64, 8, seed=l, hook=hook).save_model(str(tmp_path / f"{kind}{l}"))
    cfg = RunConfig(profile="smoke", run_dir=str(tmp_path / "run"), hook="model.layers.2", sae_width=64, sae_k=8)
    sae, hook, reader_model, info = baselines.build_variant(cfg, "mlp", subject, None,
                                                            sources={"mlp": str(tmp_path / "m{layer}")})
    assert hook == "model.layers.2.mlp" and info["source"] == str(tmp_path / "m2") and reader_model is subject
    assert sae.cfg.d_sae == 64 and not cfg.path.variant("mlp").sae_dir.exists()
    specs = {"resid": str(tmp_path / "r{layer}"), "mlp": str(tmp_path / "m{layer}"), "twin": str(tmp_path / "r2"),
             "narrow": str(tmp_path / "r3")}
    assert layers.source_for("mlp3", specs) == str(tmp_path / "m3") and layers.source_for("twin", specs) == specs["twin"]
    assert layers.source_for("resid1", {}) is None
    fam = layers.train(RunDir(tmp_path / "run"), subject, rows, width=64, k=8, n_layers=4, hook="model.layers.2",
                       sources=specs, progress=False)
    assert fam.layers == (1, 2, 3, 4) and not (tmp_path / "run" / "layers").exists()  # nothing trained
    assert fam.reports["mlp4"].path == str(tmp_path / "m4") and fam.reports["mlp4"].training_tokens == 0
    assert 0 < fam.reports["resid1"].fvu and fam.hooks["mlp4"] == "model.layers.4.mlp"


def test_full_profile_sources_are_sae_lens_releases():
    """The full profile's releases and ids exist in sae-lens's own registry (read offline)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    from autointerp import config

    registry = get_pretrained_saes_directory()
    run = config.settings("run", "full")
    layer = int(run["hook"].rsplit(".", 1)[1])
    wanted = [run["sae"]] + [s.format(layer=layer) for s in config.settings("baselines", "full")["sources"].values()]
    wanted += [s.format(layer=l) for s in config.settings("alignment", "full")["sources"].values()
               for l in range(layer - 1, layer + 3)]
    for spec in wanted:
        release, _, sae_id = spec.removeprefix("sae-lens:").partition("/")
        assert release in registry and sae_id in registry[release].saes_map, spec
