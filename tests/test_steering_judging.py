"""Chapter glue for 03/04 (judging) and 07 (steering): judge settings per endpoint, honest notes
from the control's numbers, intervention summaries whose CIs match an independent computation."""
from __future__ import annotations

import numpy as np
import pytest

from autointerp import config, judging, results, steering
from autointerp.llm import Endpoint, LLMClient
from autointerp.metrics import NAN, LatentMetrics
from autointerp.records import ScorerResult
from autointerp.scorers import intervention as iv


def _judge(url: str, model: str, **caps) -> judging.Judge:
    ep = Endpoint(base_url=url, model=model, api_key_env="AUTOINTERP_TEST_NO_KEY", **caps)
    return judging.Judge(ep, LLMClient(ep, None))


EMBEDDED = dict(lists=False, embedded=True)  # what the local server's endpoint says of the 135M model


def test_judge_settings_follow_the_endpoint():
    local = _judge("http://127.0.0.1:9/v1", "smollm2-135m-instruct", **EMBEDDED)
    assert local.is_embedded
    assert judging.judge_settings(local) == {"n_per_prompt": 1, "logprobs": True}
    # what the endpoint can do decides, never the model's name
    named = _judge("http://127.0.0.1:9/v1", "smollm2-135m-instruct")
    assert not named.is_embedded and judging.judge_settings(named)["n_per_prompt"] == 5
    with pytest.warns(UserWarning, match="No API key"):
        remote = _judge("https://api.example.com/v1", "big-model")
    assert not remote.is_embedded
    assert judging.judge_settings(remote) == {"n_per_prompt": 5, "logprobs": True}
    assert judging.judge_settings(remote, 3, False) == {"n_per_prompt": 3, "logprobs": False}
    remote.close()  # no server: a no-op


def test_honesty_note_reads_the_planted_control():
    local = _judge("http://127.0.0.1:9/v1", "smollm2-135m-instruct", **EMBEDDED)
    weak = judging.honesty_note(local, {"metric": "auroc", "diff_ci": (-0.1, 0.2), "verdict": "at chance"})
    assert "does NOT separate" in weak and "135M" in weak and "llm_base_url" in weak
    good = judging.honesty_note(local, {"metric": "auroc", "diff_ci": (0.05, 0.3), "verdict": "separates"})
    assert "measurements" in good and "NOT" not in good
    few = judging.honesty_note(local, {"metric": "auroc", "diff_ci": (0.05, 0.3), "n_latents": 3,
                                       "verdict": "too few planted latents to tell"})
    assert "too few" in few and "unvalidated" in few
    assert "unvalidated" in judging.honesty_note(local, None)


def _res(lat: int, score: float, control: str | None = None) -> ScorerResult:
    m = LatentMetrics(lat, n_pos=4, n_neg=0, n_failed=0, balanced_accuracy=NAN, precision=NAN,
                      recall=NAN, f1=NAN, auroc=NAN, mean_score=score, sem=0.1)
    return ScorerResult(latent=lat, scorer="intervention", explanation=f"e{lat}", examples=(),
                        metrics=m, control=control,
                        details={"strength": 1.0, "strength_rel": 1.0, "achieved_kl": 0.5, "target_kl": 0.5,
                                 "raised": []})


def test_intervention_summary_and_verdict():
    trained = [_res(j, s) for j, s in enumerate([2.0, 3.0, 2.5, 3.5, 2.8])]
    shuffled = [_res(j, s, iv.SHUFFLED) for j, s in enumerate([0.1, -0.2, 0.3, 0.0, 0.4])]
    rnd = [_res(j, s, iv.RANDOM_SAE) for j, s in enumerate([0.2, 0.1, -0.1])]
    run = steering.InterventionRun({"trained": trained, iv.SHUFFLED: shuffled, iv.RANDOM_SAE: rnd,
                                    "input_explanation": []}, {}, {})
    s = steering.summary(run, seed=0)
    assert s["conditions"]["trained"]["max"] == 3.5 and s["conditions"]["trained"]["n"] == 5
    assert "input_explanation" not in s["conditions"]
    d = s["trained_minus"][iv.SHUFFLED]  # paired: mean of per-latent differences
    assert d.mean == pytest.approx(np.mean([1.9, 3.2, 2.2, 3.5, 2.4])) and d.low > 0
    r = s["trained_minus"][iv.RANDOM_SAE]  # unpaired: difference of means
    assert r.mean == pytest.approx(2.76 - np.mean([0.2, 0.1, -0.1])) and r.low > 0
    assert "NOT" not in steering.verdict(run)
    null = steering.InterventionRun({"trained": trained, iv.SHUFFLED: [_res(j, x.metrics.mean_score, iv.SHUFFLED)
                                                                       for j, x in enumerate(trained)]}, {}, {})
    assert "NOT distinguishable" in steering.verdict(null) and "No control is beaten" in steering.verdict(null)
    assert steering.table(run).shape[0] == 13 and steering.figure(run).data
    few = steering.InterventionRun({"trained": trained[:2], iv.SHUFFLED: shuffled[:2]}, {}, {})
    assert "too few latents" in steering.verdict(few)


def test_intervention_results_file(tmp_path):
    trained = [_res(j, s) for j, s in enumerate([2.0, 3.0, 2.5])]
    run = steering.InterventionRun({"trained": trained, iv.SHUFFLED: [_res(j, 0.0, iv.SHUFFLED) for j in range(3)]},
                                   {"trained": 1.0}, {7: "no prompts"})
    path = steering.write_results(tmp_path, run, seed=0, settings={"n_prompts": 4}, hook="h")
    assert path == tmp_path / "scores" / "intervention.jsonl"
    head, recs = results.read(path, "scores")
    assert head["schema"] == "autointerp.scores/1" and head["scorer"] == "intervention" and head["hook"] == "h"
    assert head["settings"] == {"n_prompts": 4} and head["skipped"] == {"7": "no prompts"}
    assert head["seconds"] == {"trained": 1.0}
    assert head["summary"]["conditions"]["trained"]["max"] == 3.0
    assert head["verdicts"] == {iv.SHUFFLED: "too few latents"}  # 3 latents < MIN_LATENTS_FOR_CLAIM
    assert [(r["condition"], r["latent"], r["metrics"]["mean_score"]) for r in recs] == \
        [("trained", 0, 2.0), ("trained", 1, 3.0), ("trained", 2, 2.5)] + [(iv.SHUFFLED, j, 0.0) for j in range(3)]
    assert recs[0]["details"]["strength"] == 1.0 and recs[0]["scorer"] == "intervention"


def test_profile_settings_override():
    knobs = config.settings("intervention", "smoke", n_latents=5, max_len=None)
    assert knobs["n_latents"] == 5 and knobs["max_len"] == 24  # None keeps the profile's value
