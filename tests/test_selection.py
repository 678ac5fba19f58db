"""Chapter 10: best-of-k judged on held-out examples, refinement rounds, the completion explainer,
reader phrasings, and scorer agreement."""
from __future__ import annotations

import math

import numpy as np
import pytest
from fault_server import FaultServer

from autointerp import agreement, completion, explain, findings, metrics, results, selection
from autointerp.llm import Endpoint, LLMClient
from autointerp.records import Explanation, LatentExamples, Window
from autointerp.rundir import RunDir
from autointerp.scorers import ScoredExample, make_result

WORDS = ["<bos>", "alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota"]


def _win(lat, row, ids, kind, q=None):
    acts = tuple(1.0 if kind == "activating" else 0.0 for _ in ids)
    return Window(lat, row, 1, tuple(ids), acts, max(acts), q, kind)


def _lex(lat: int, word: int) -> LatentExamples:
    """A latent that fires on windows holding WORDS[word]; silent windows hold other words."""
    act = tuple(_win(lat, r, (word, 1 + r % 3), "activating", r % 4) for r in range(12))
    neg = tuple(_win(lat, 100 + r, (5 + r % 4, 4), "random") for r in range(12))
    train = tuple(_win(lat, 200 + r, (word, 2), "activating", 0) for r in range(4))
    return LatentExamples(lat, 1.0, 4, train=train, test_activating=act, test_negative=neg)


class WordScorer:
    """A real, transparent scorer: an example scores 1 when a word of the explanation names one of
    its tokens, else 0 (plus a tiny per-example offset so AUROC is defined); AUROC per latent."""

    name = "words"

    def score(self, explanations, examples):
        out = []
        for lat, text in explanations.items():
            named = {w for w in text.replace('"', " ").split()}
            scored = [ScoredExample(lat, e.id, " ".join(WORDS[i] for i in e.token_ids), e.label, e.quantile,
                                    score=float(any(WORDS[i] in named for i in e.token_ids)) + 1e-3 * (k % 3))
                      for k, e in enumerate(examples[lat])]
            out.append(make_result(lat, self.name, text, scored))
        return out


class NoiseScorer:
    """Scores every example at random (seeded by the explanation): no candidate is better than another."""

    name = "noise"

    def score(self, explanations, examples):
        out = []
        for lat, text in explanations.items():
            rng = np.random.default_rng([lat, int.from_bytes(text.encode()[-4:], "little"), *(e.row for e in examples[lat])])
            scored = [ScoredExample(lat, e.id, "", e.label, e.quantile, score=float(rng.random()))
                      for e in examples[lat]]
            out.append(make_result(lat, self.name, text, scored))
        return out


def _cands(lexs, right: bool = True):
    recs = []
    for lx in lexs:
        word = WORDS[lx.train[0].token_ids[0]]
        recs += [Explanation(lx.latent, "llm_k", "the word eps", sample=0, n_samples=3, model="m"),
                 Explanation(lx.latent, "llm_k", None, failed=True, sample=1, n_samples=3, model="m",
                             details={"failure": "format"}),
                 Explanation(lx.latent, "llm_k", "the word eps", sample=2, n_samples=3, model="m"),  # duplicate
                 Explanation(lx.latent, "top_words", f"the word {word}" if right else "the word iota")]
    return recs


def test_split_halves_are_disjoint_and_hold_both_kinds():
    lexs = [_lex(j, 1 + j % 4) for j in range(3)]
    sp = selection.split(lexs, n_pos=8, n_neg=8)
    for j in sp.selection:
        a, b = {e.id for e in sp.selection[j]}, {e.id for e in sp.heldout[j]}
        assert not a & b and len(a) == len(b) == 8
        for half in (sp.selection[j], sp.heldout[j]):
            assert sum(e.label for e in half) == 4 and len({e.quantile for e in half if e.label}) >= 2
    with pytest.raises(ValueError, match="to split"):
        selection.split(lexs[:1])


def test_best_of_k_keeps_the_right_candidate_and_the_gain_holds_out():
    lexs = [_lex(j, 1 + j % 4) for j in range(6)]
    sp = selection.split(lexs)
    recs = _cands(lexs)
    cands = selection.candidates(recs, [x.latent for x in lexs])
    assert [c.source for c in cands[0]] == ["llm_k#0", "top_words"]  # failed and duplicate texts dropped
    sel = selection.best_of_k(WordScorer(), cands, sp, seed=0)
    assert all(sel.candidates[j][sel.kept[j]].source == "top_words" for j in sel.kept)
    d = sel.kept_minus_random(seed=0).diff
    assert d.mean > 0.1 and d.low >= 0 and d.n == 6  # never worse than the random pick, better where it differs
    assert all(sel.on_heldout[j][sel.kept[j]] >= sel.on_heldout[j][sel.random[j]] for j in sel.kept)
    rates = selection.success_rates(recs)
    assert rates["llm_k"] == {"replies": 18, "parsed": 12, "failures": {"format": 6}, "share": 12 / 18}
    assert "top_words" not in rates  # not an LLM explainer
    mine = selection.rank_of(sel, WordScorer(), 0, "the word alpha iota")
    assert mine["selection_rank"] == 1 and mine["of"] == 3


def test_selection_bias_shows_as_optimism_not_as_a_held_out_gain():
    """With a scorer that cannot tell candidates apart, keeping the best on the selection split
    looks good there (optimism > 0) but gains nothing on held-out examples."""
    lexs = [_lex(j, 1 + j % 4) for j in range(40)]
    sp = selection.split(lexs, n_pos=4, n_neg=4)
    recs = [Explanation(lx.latent, "llm_k", f"candidate {i}", sample=i, n_samples=6, model="m")
            for lx in lexs for i in range(6)]
    sel = selection.best_of_k(NoiseScorer(), selection.candidates(recs, [x.latent for x in lexs]), sp, seed=1)
    assert sel.optimism(seed=0).diff.low > 0.05
    held = sel.kept_minus_random(seed=0).diff
    assert held.low < 0 < held.high or abs(held.mean) < 0.05


def test_refinement_rounds_score_each_revision_and_keep_text_on_failure(tmp_path):
    lexs = [_lex(j, 1 + j % 4) for j in range(4)]
    sp = selection.split(lexs)
    sel = selection.best_of_k(WordScorer(), selection.candidates(_cands(lexs, right=False), [x.latent for x in lexs]),
                              sp, seed=0)
    replies = ["[EXPLANATION]: the words alpha and gamma here", "no marker at all", "[EXPLANATION]: theta iota things",
               "[EXPLANATION]: the word delta shows up"]
    with FaultServer([("good", r) for r in replies]) as srv:
        client = LLMClient(Endpoint(base_url=srv.base_url, model="fake"), None, timeout_s=30, concurrency=1)
        ref = selection.refine(sel, sp, {x.latent: x for x in lexs}, explain.LLMExplainer(), client, WordScorer(),
                               lambda ids: [WORDS[i] for i in ids], rounds=1)
        prompts = [r["messages"][1]["content"] for r in srv.requests]
    assert len(ref.texts) == 2 and len(ref.failed[1]) == 1
    failed = next(iter(ref.failed[1]))
    assert ref.texts[1][failed] == ref.texts[0][failed]  # a failed revision keeps the previous text
    assert all("An earlier description" in p and "does NOT fire" in p for p in prompts)
    rows = ref.round_means(seed=0)
    assert rows[0]["change"] == 0 and rows[1]["n"] == 4 and rows[1]["revisions_failed"] == 1
    path = selection.write(RunDir(tmp_path), sel, ref, selection.success_rates(_cands(lexs)), seed=0)
    header, recs = results.read(path, "scores")
    assert header["claim"] == selection.CLAIM and header["verdict"] in metrics.VERDICTS and len(header["rounds"]) == 2
    assert sum(r.get("kept", False) for r in recs) == len(sel.kept)
    row = next(r for r in findings.collect(RunDir(tmp_path)) if r["claim"] == selection.CLAIM)
    assert row["chapter"] == "10" and row["scorer"] == "words" and row["planted_exam"] == "not taken"


@pytest.mark.parametrize("reply, ok", [('file"', "file"), ("names of files", "names of files"),
                                       ("cookie, cookie, cookie", None), ("ocean, sea", None), ("", None),
                                       (" ".join(["word"] * 3 + [f"w{i}" for i in range(12)]), None)])
def test_completion_themes_are_checked(reply, ok):
    text, kind, why = completion.read_theme(reply, "a prompt about files")
    assert text == ok and (kind is None) == (ok is not None)


def test_completion_explainer_asks_the_completions_endpoint():
    lx = _lex(3, 2)
    ex = completion.CompletionExplainer(n_samples=2, seed=5)
    decode = lambda ids: [WORDS[i] for i in ids]  # noqa: E731
    with FaultServer([("good", 'beta words"'), ("good", "beta, beta, beta")]) as srv:
        client = LLMClient(Endpoint(base_url=srv.base_url, model="fake"), None, timeout_s=30, concurrency=1)
        recs = explain.run_explainers([lx], [ex], decode, client)
        sent = srv.requests
    assert all("prompt" in r and "messages" not in r and r["stop"] == ['"', "\n"] for r in sent)
    assert sent[0]["prompt"].endswith(completion.LEAD_IN) and "<<betabeta>>" in sent[0]["prompt"]
    assert [r.text for r in recs] == ["beta words", None] and recs[1].details["failure"] == "echo"
    assert {r["seed"] for r in sent} == {5, 6} and all(r["temperature"] == 0.8 for r in sent)


def test_top_words_phrases_the_top_tokens_as_a_reader_would():
    decode = lambda ids: [WORDS[i] for i in ids]  # noqa: E731
    one = explain.TopWordsExplainer().explain(_lex(0, 3), decode)
    assert one.text == 'the word "gamma"'
    mixed = LatentExamples(1, 1.0, 4, train=tuple(_win(1, r, (1 + r % 2, 4), "activating", 0) for r in range(6)))
    assert explain.TopWordsExplainer().explain(mixed, decode).text == 'the words "alpha" and "beta"'


def test_spearman_ci_and_agreement_over_shared_latents(tmp_path):
    r = agreement.spearman_ci([1, 2, 3, 4, 5, 6], [2, 4, 6, 8, 10, 12])
    assert r.mean == pytest.approx(1.0) and r.low == pytest.approx(1.0) and r.n == 6
    assert math.isnan(agreement.spearman_ci([1, 1, 1], [1, 2, 3]).mean)
    rd = RunDir(tmp_path)
    rng = np.random.default_rng(0)
    base = rng.random(12)
    for name, vals in (("embedding", base), ("detection", base + 0.01 * rng.random(12)), ("surprisal", rng.random(12))):
        recs = [{"latent": j, "control": None, "explanation": f"e{j}", "metrics": {"auroc": float(v)}}
                for j, v in enumerate(vals)]
        recs.append({"latent": 0, "control": "shuffled", "explanation": "e5", "metrics": {"auroc": 0.0}})
        results.write(rd.scores(name), "scores", recs, metric="auroc")
    ag = agreement.measure(rd, ["embedding", "detection", "surprisal"])
    assert ag.pairs[("embedding", "detection")].mean > 0.9 and ag.pairs[("embedding", "detection")].n == 12
    assert ag.matrix().shape == (3, 3)
    text = agreement.text(ag)
    assert "cannot be tested on this run: simulation" in text and "Most alike: embedding and detection" in text
