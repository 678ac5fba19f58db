"""Intruder trials and scorers: a fake judge that finds the odd one out by rule, and MiniLM."""
from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np
import pytest
from fault_server import FaultServer

from autointerp import results
from autointerp.llm import Endpoint, LLMClient
from autointerp.records import ScoredExample, ScorerResult, Window
from autointerp.scorers import compare, run_with_control
from autointerp.scorers.intruder import (MIXED, EmbeddingIntruder, IntruderScorer, build_trials,
                                         parse_choice)

KEYS = ["cat", "dog", "owl", "fox", "bee", "ant"]
VOCAB = [f" {w}" for w in KEYS + ["the", "sat", "on", "a", "mat", "big", "ran", "home", "zzz", "qqq"]]
FILLER = list(range(6, 14))
ZZZ, QQQ = 14, 15
FAST = dict(timeout_s=5, max_tries=2, backoff_base_s=0.01, backoff_max_s=0.05)


def decode(ids):
    return [VOCAB[i] for i in ids]


def make_examples(latent: int, n_pos: int = 9, n_neg: int = 6, seed: int = 0,
                  extra_neg: tuple[list[int], ...] = ()) -> list[Window]:
    """Activating windows hold the latent's key word (KEYS[latent]); quantiles 0-2."""
    rng = np.random.default_rng([seed, latent])
    out = []
    for i in range(n_pos):
        ids = [int(t) for t in rng.choice(FILLER, 8)]
        acts = [0.0] * 8
        ids[1 + i % 6], acts[1 + i % 6] = latent, 9.0 - i
        out.append(Window(latent, i, 0, tuple(ids), tuple(acts), 9.0 - i, i // 3, "activating"))
    negs = [[int(t) for t in rng.choice(FILLER, 8)] for _ in range(n_neg)] + list(extra_neg)
    for j, ids in enumerate(negs):
        out.append(Window(latent, 100 + j, 0, tuple(ids), (0.0,) * 8, 0.0, None, "random"))
    return out


def all_examples(n_latents: int = 6) -> dict[int, list[Window]]:
    return {lat: make_examples(lat) for lat in range(n_latents)}


class OddJudge(FaultServer):
    """Knows the rule: a key word in all but one excerpt -> that one; otherwise answers 1.
    ' qqq' in the prompt: no number; ' zzz': 7 (out of range). Logprobs at the answer token:
    the answer 0.6, the next two numbers 0.2 and 0.1, a non-number 0.1."""

    @staticmethod
    def _answer(req: dict) -> tuple[int, int]:
        exs = re.findall(r"^Excerpt \d+: (.*)$", req["messages"][-1]["content"], re.M)
        words = [set(e.split()) & set(KEYS) for e in exs]
        shared = [w for w, c in Counter(w for ws in words for w in ws).items() if c == len(exs) - 1]
        ans = next(i for i, ws in enumerate(words) if shared[0] not in ws) + 1 if len(shared) == 1 else 1
        return ans, len(exs)

    def _echo(self, req: dict) -> str:
        user = req["messages"][-1]["content"]
        if " qqq" in user:
            return "I cannot tell."
        return "7" if " zzz" in user else str(self._answer(req)[0])

    def _completion(self, req: dict, text: str, serve_lp: bool) -> dict:
        out = FaultServer._completion(req, text, serve_lp=False)
        if serve_lp and req.get("logprobs"):
            a, n = self._answer(req)
            alts = [(text, 0.6), (str(a % n + 1), 0.2), (str((a + 1) % n + 1), 0.1), ("The", 0.1)]
            top = [{"token": t, "logprob": math.log(p)} for t, p in alts]
            out["choices"][0]["logprobs"] = {"content": [
                {"token": text, "logprob": math.log(0.6), "top_logprobs": top}]}
        return out


def client_for(srv: FaultServer) -> LLMClient:
    return LLMClient(Endpoint(base_url=srv.base_url, model="fake-judge"), None, **FAST)


def test_trials_are_seeded_and_well_formed():
    exs = all_examples()
    trials = build_trials(exs, n_trials=10, n_activating=4, seed=3)
    assert trials == build_trials(exs, n_trials=10, n_activating=4, seed=3)
    assert trials != build_trials(exs, n_trials=10, n_activating=4, seed=4)
    assert len(trials) == 60 and len(Counter(t.intruder for t in trials)) == 5  # every position
    for t in trials:
        kinds = [e.kind for e in t.shown]
        assert len(t.shown) == 5 and kinds.count("random") == 1 and kinds[t.intruder] == "random"
        assert all(e.latent == t.latent for e in t.shown) and set(t.sources) == {t.latent}
        act = [e for e in t.shown if e.kind == "activating"]
        assert len(set(act)) == 4 and {e.quantile for e in act} == {0, 1, 2}  # spread over bins
        assert not t.control and len(t.ids) == 5 and t.ids == tuple(e.id for e in t.shown)
    used = Counter(e for t in trials if t.latent == 0 for e in t.shown if e.kind == "activating")
    assert len(used) == 9 and max(used.values()) - min(used.values()) <= 1  # least-used first


def test_control_trials_draw_from_different_other_latents():
    exs = all_examples()
    trials = build_trials(exs, n_trials=8, n_activating=4, seed=0, control=True)
    assert trials == build_trials(exs, n_trials=8, n_activating=4, seed=0, control=True)
    for t in trials:
        others = [s for i, s in enumerate(t.sources) if i != t.intruder]
        assert t.control and len(set(others)) == 4 and t.latent not in others
        assert t.sources[t.intruder] == t.latent and t.shown[t.intruder].kind == "random"
        assert all(e.latent == s for e, s in zip(t.shown, t.sources))
    assert len({t.sources for t in trials}) > 1


def test_trial_errors_say_what_to_change():
    exs = all_examples()
    with pytest.raises(ValueError, match="2 activating examples, need n_activating=4"):
        build_trials({0: make_examples(0, n_pos=2)})
    with pytest.raises(ValueError, match="no non-activating example"):
        build_trials({0: make_examples(0, n_neg=0)})
    with pytest.raises(ValueError, match="3 other latents with activating examples"):
        build_trials({k: exs[k] for k in range(4)}, control=True)
    with pytest.raises(ValueError, match="n_activating >= 2"):
        build_trials(exs, n_activating=1)
    with pytest.raises(ValueError, match="belong to another latent"):
        build_trials({1: exs[0]})
    with pytest.raises(TypeError, match="records.Window"):
        build_trials({0: [{"latent": 0}]})


def test_parse_choice_is_strict():
    assert parse_choice("3", 5) == (2, None)
    assert parse_choice("Excerpt 4.", 5) == (3, None)
    assert parse_choice("2, maybe 3", 5) == (1, None)
    for bad, why in [("0", "outside 1..5"), ("6", "outside 1..5"), ("2.5", "not an integer"),
                     ("none of them", "no number"), ("", "no number")]:
        got, reason = parse_choice(bad, 5)
        assert got is None and why in reason, (bad, reason)


def test_judge_finds_intruders_and_mixed_control_is_chance(tmp_path):
    exs = all_examples()
    with OddJudge() as srv:
        scorer = IntruderScorer(client_for(srv), decode=decode, n_trials=20, logprobs=True)
        run = run_with_control(scorer, None, exs, seed=0, metric="accuracy")
    real, control = run.real, run.control
    assert srv.n_calls == 2 * 6 * 20  # real and control trials, one prompt each
    assert [r.latent for r in real] == [r.latent for r in control] == list(range(6))
    trials = {(t.control, t.latent, t.index): t for t in build_trials(exs, 20, seed=0)
              + build_trials(exs, 20, seed=0, control=True)}
    for r in real:
        assert isinstance(r, ScorerResult) and r.explanation == ""
        assert r.scorer == "intruder" and r.control is None and r.metrics.accuracy == 1.0
        assert len(r.examples) == r.details["n_trials"] == 20 and r.metrics.n_failed == 0
        assert r.details["chance"] == pytest.approx(0.2)
        assert r.details["mean_p_correct"] == pytest.approx(2 / 3)
        assert r.usage["prompt_hash"] == scorer.prompt_hash and r.usage["n_prompts"] == 20
        assert r.usage["trial_seed"] == 0
        assert all(t.details["guess"] == t.details["intruder"] and t.prediction == 1 for t in r.examples)
        for e in r.examples:  # one ScoredExample per trial, laid out as the trial was built
            t = trials[(False, r.latent, e.example_id)]
            assert isinstance(e, ScoredExample) and e.label is True and e.quantile is None
            assert e.details["ids"] == t.ids and e.details["sources"] == t.sources
            assert e.details["intruder"] == t.intruder and e.score == pytest.approx(0.6 / 0.9)
            assert e.text == "\n".join(e.details["texts"]) and len(e.details["texts"]) == 5
    assert [e.example_id for e in real[0].examples] == list(range(20))
    assert all(c.control == MIXED for c in control)
    acc = [c.metrics.accuracy for c in control]  # the judge answers 1: right iff the intruder came first
    assert 0.08 < np.mean(acc) < 0.35 and np.mean([c.details["mean_p_correct"] for c in control]) < 0.4
    for c in control:
        assert c.metrics.accuracy == pytest.approx(np.mean([t.details["intruder"] == 0 for t in c.examples]))
        assert all(e.details["sources"] == trials[(True, c.latent, e.example_id)].sources
                   for e in c.examples)
    assert run.metric == "accuracy"
    assert run.comparison == compare(real, control, "accuracy", seed=0)
    cmp = compare(real, control, "accuracy", n_boot=200)
    assert cmp.diff.mean > 0.6 and cmp.frac_real_better == 1.0
    text = scorer.render_prompt(build_trials(exs)[0])
    assert "odd one out" in text and "Excerpt 5:" in text and "<<" not in text

    # the chapter's glue: summary, figure and the scores file, from the same run
    from autointerp import judging

    summary = judging.intruder_summary("intruder", run, seed=0)
    assert summary.startswith("intruder: accuracy 1.00 on real trials") and "0 of 240 trials" in summary
    fig = judging.intruder_figure({"intruder": run})
    assert [b.y[0] for b in fig.data] == pytest.approx([1.0, np.mean(acc)])
    path = judging.write_intruder(tmp_path, "intruder", run, scorer=scorer, seed=0, n_activating=4)
    assert path == tmp_path / "scores" / "intruder.jsonl"
    head, recs = results.read(path, "scores")
    assert head["schema"] == "autointerp.scores/1" and head["scorer"] == "intruder"
    assert head["metric"] == "accuracy" and head["seed"] == 0 and head["n_activating"] == 4
    assert head["prompt_hash"] == scorer.prompt_hash and head["settings"]["n_trials"] == 20
    assert head["comparison"]["diff"]["mean"] == pytest.approx(run.comparison.diff.mean)
    assert [(r["latent"], r["control"]) for r in recs] == [(r.latent, r.control) for r in [*real, *control]]
    assert [r["metrics"]["accuracy"] for r in recs] == pytest.approx(
        [r.metrics.accuracy for r in [*real, *control]])


def test_unparseable_answers_fail_their_trials_only():
    exs = {0: make_examples(0, n_neg=2, extra_neg=([6, 7, ZZZ, 8, 9, 10, 11, 12], [QQQ, 7, 8, 9, 10, 11, 12, 13]))}
    with OddJudge() as srv:
        [r] = IntruderScorer(client_for(srv), decode=decode, n_trials=8).score(None, exs)
    failed = [t for t in r.examples if t.details["guess"] is None]
    assert r.metrics.n_failed == len(failed) >= 2 and r.metrics.accuracy == 1.0
    assert math.isnan(r.details["mean_p_correct"])
    assert any("outside 1..5" in t.details["reason"] for t in failed)
    assert any("no number" in t.details["reason"] for t in failed)
    assert all((" zzz" in " ".join(t.details["texts"])) or (" qqq" in " ".join(t.details["texts"]))
               for t in failed)
    assert all(t.prediction is None and t.score is None for t in failed)


def test_all_failed_and_logprobs_fallback():
    with OddJudge(default=("good", "no idea")) as srv:
        [r] = IntruderScorer(client_for(srv), decode=decode).score(None, {0: make_examples(0)})
    assert r.metrics.n_failed == 5 and math.isnan(r.metrics.accuracy)
    with OddJudge(default=("no_logprobs",)) as srv:
        [r] = IntruderScorer(client_for(srv), decode=decode, logprobs=True).score({0: "ignored"},
                                                                               {0: make_examples(0)})
    assert r.metrics.accuracy == 1.0 and math.isnan(r.details["mean_p_correct"])
    assert "logprobs_fallback" in r.usage["p_unavailable"]


CATS = ["The cat purred softly on the warm windowsill", "My kitten chased a ball of yarn across the floor",
        "The cat licked its paws and curled up to sleep", "A tabby cat hunted mice in the barn",
        "Our cat meows loudly when her food bowl is empty", "The kitten climbed the curtains and hissed at the dog",
        "Cats love to nap in sunny spots", "The cat scratched the sofa with its claws"]
TAXES = ["File your income tax return before the April deadline", "The IRS audits deductions on tax returns",
         "Capital gains tax applies when you sell shares", "Property taxes are assessed by the county"]


def test_embedding_intruder_spots_the_off_topic_window():
    words = sorted({w for s in CATS + TAXES for w in s.split()})
    vocab = [f" {w}" for w in words]

    def dec(ids):
        return [vocab[i] for i in ids]

    def ex(i, s, kind):
        ids = tuple(words.index(w) for w in s.split())
        return Window(0, i, 0, ids, (1.0,) * len(ids), 1.0, i % 2 if kind == "activating" else None, kind)

    exs = {0: [ex(i, s, "activating") for i, s in enumerate(CATS)]
           + [ex(100 + j, s, "random") for j, s in enumerate(TAXES)]}
    [r] = EmbeddingIntruder(decode=dec, n_trials=6).score(None, exs)
    assert r.scorer == "intruder_embedding" and r.metrics.accuracy == 1.0
    assert r.details["mean_p_correct"] == 1.0 and all(e.score == 1.0 for e in r.examples)
    assert r.details["n_trials"] == len(r.examples) == 6 and r.metrics.n_failed == 0
    assert r.usage["n_texts_embedded"] == 12
    assert len({t.details["intruder"] for t in r.examples}) > 1
