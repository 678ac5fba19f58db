"""The scoring glue: a run dir's examples + explanations become the right window sets, the
explanation choice follows the documented preference, and results files round-trip."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import pytest

from autointerp import examples as exm
from autointerp import explanations, results, scoring
from autointerp.records import Explanation, LatentExamples, Window, window_text
from autointerp.scorers import SHUFFLED, ScoredExample, make_result, run_with_control

WORDS = ["<bos>", "alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"]


class WordTokenizer:
    """Token id i -> WORDS[i]; id 0 is a special token."""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return " ".join(WORDS[i] for i in ids if not (skip_special_tokens and i == 0))


def _ex(lat: int, row: int, ids: tuple[int, ...], q: int | None, kind: str) -> Window:
    acts = tuple(1.0 if kind == "activating" else 0.0 for _ in ids)
    return Window(lat, row, 1, ids, acts, max(acts), q, kind)


def _lex(lat: int, skipped: str | None = None) -> LatentExamples:
    act = tuple(_ex(lat, r, (1 + r % 3, 4), r % 2, "activating") for r in range(6))  # q 0,1,0,1,...
    rnd = tuple(_ex(lat, 10 + r, (5, 6), None, "random") for r in range(3))
    hard = tuple(_ex(lat, 20 + r, (0, 7, 8), None, "hard_negative") for r in range(2))
    return LatentExamples(lat, 1.0, 6, test_activating=act, test_negative=rnd,
                              test_hard_negative=hard, skipped_reason=skipped)


def _x(lat: int, name: str, text: str | None, sample: int = 0) -> Explanation:
    return Explanation(lat, name, text, failed=text is None, sample=sample)


@pytest.fixture()
def run_dir(tmp_path):
    exm.save(tmp_path / "examples.jsonl", [_lex(1), _lex(2), _lex(3), _lex(4, "too rare")])
    recs = [_x(1, "llm", "alpha things"), _x(1, "top_tokens", "Fires on alpha"),
            _x(2, "llm", None), _x(2, "contrastive", "beta not gamma"), _x(2, "top_tokens", "beta"),
            _x(3, "llm", None), _x(3, "top_tokens", "gamma"), _x(3, "llm", "late sample", sample=1),
            _x(4, "top_tokens", "delta"), _x(5, "llm", None)]
    explanations.save(tmp_path, recs, explainers=[])
    return tmp_path


def test_selected_windows_labels_quantiles_and_decoding():
    wins = scoring.select_examples(_lex(7))
    pos, neg = [e for e in wins if e.label], [e for e in wins if not e.label]
    assert len(pos) == 6 and len(neg) == 5 and wins[:6] == pos
    assert all(e.latent == 7 for e in wins)
    assert [e.quantile for e in pos] == [0, 1, 0, 1, 0, 1]  # round-robin over quantile bins
    assert window_text(pos[0], WordTokenizer()) == "alpha delta" and pos[0].id == "0:1"
    assert all(e.quantile is None for e in neg)
    # random, hard (its BOS-like special token 0 dropped), random
    assert [window_text(e, WordTokenizer()) for e in neg[:3]] == ["eps zeta", "eta theta", "eps zeta"]
    capped = scoring.select_examples(_lex(7), n_pos=3, n_neg=2)
    assert [e.quantile for e in capped if e.label] == [0, 1, 0] and sum(not e.label for e in capped) == 2


def test_pick_explanations_prefers_successful_llm_then_top_tokens(run_dir):
    recs = explanations.load_records(run_dir)[1]
    picked, skipped = scoring.pick_explanations(recs)
    assert picked[1] == ("llm", "alpha things")
    assert picked[2] == ("contrastive", "beta not gamma")
    assert picked[3] == ("top_tokens", "gamma")  # sample 1 of llm is not the first explanation
    assert 5 in skipped and 5 not in picked
    only, sk = scoring.pick_explanations(recs, "top_tokens")
    assert only[1] == ("top_tokens", "Fires on alpha") and 5 in sk
    with pytest.raises(ValueError, match="not in explanations.jsonl"):
        scoring.pick_explanations(recs, "nope")


def test_load_inputs_from_a_run_dir(run_dir):
    inp = scoring.load_inputs(run_dir, n_pos=4, n_neg=4)
    assert sorted(inp.explanations) == [1, 2, 3]
    assert inp.explainer == {1: "llm", 2: "contrastive", 3: "top_tokens"}
    assert "too rare" in inp.skipped[4] and 5 in inp.skipped
    assert all(len(v) == 8 and sum(e.label for e in v) == 4 for v in inp.examples.values())
    assert len(scoring.load_inputs(run_dir, n_latents=2).explanations) == 2
    with pytest.raises(ValueError, match="needs 2 or more"):
        scoring.load_inputs(run_dir, n_latents=1)


class WordOverlapScorer:
    """Score = fraction of the explanation's words that occur in the example."""

    name = "overlap"

    def score(self, explanations: Mapping[int, str], examples: Mapping[int, Sequence[Window]]):
        out = []
        for lat, text in sorted(explanations.items()):
            words = set(text.lower().split())
            scored = [ScoredExample(lat, e.id, window_text(e, WordTokenizer()), e.label, e.quantile,
                                    score=len(words & set(window_text(e, WordTokenizer()).split())) / len(words))
                      for e in examples[lat]]
            out.append(make_result(lat, self.name, text, scored, usage={"model": "words"}))
        return out


def test_run_write_and_read_back(run_dir):
    inp = scoring.load_inputs(run_dir)
    run = run_with_control(WordOverlapScorer(), inp.explanations, inp.examples, seed=0)
    assert [r.control for r in run.control] == [SHUFFLED] * 3 and run.comparison.diff.n == 3
    assert "too few for a CI" in scoring.verdict(run)  # 3 latents < metrics.MIN_LATENTS_FOR_CLAIM
    path = scoring.write_scores(run_dir, run, inp, validity={"summary": "x", "diff_ci": (0.1, 0.2)},
                                seed=0)
    assert path == run_dir / "scores" / "overlap.jsonl"
    df = results.frame(path)
    header = df.attrs["header"]
    assert header["schema"] == "autointerp.scores/1"
    assert header["verdict"] == "too few latents"  # metrics.verdict of the comparison: 3 < 5 latents
    assert header["scorer"] == "overlap" and header["explainer"]["2"] == "contrastive"
    assert header["validity"]["diff_ci"] == [0.1, 0.2] and "provenance" in header
    vhead, _ = results.read(run_dir / "scores" / "overlap_validity.jsonl", "validity")
    assert vhead["schema"] == "autointerp.validity/1" and vhead["diff_ci"] == [0.1, 0.2]
    assert len(df) == 6 and set(df.control.fillna("real")) == {"real", SHUFFLED}
    real = df[df.control.isna()].set_index("latent")
    for r in run.real:
        got = real.loc[r.latent, "metrics.auroc"]
        assert (math.isnan(r.metrics.auroc) and math.isnan(got)) or got == pytest.approx(r.metrics.auroc)
        assert real.loc[r.latent, "explainer"] == inp.explainer[r.latent]
        assert len(real.loc[r.latent, "examples"]) == len(inp.examples[r.latent])
    assert scoring.per_latent_figure(run, inp).data and scoring.quantile_figure(run).data


def test_inputs_are_the_selected_windows_of_each_latent(run_dir):
    inp = scoring.load_inputs(run_dir, n_pos=3, n_neg=2)
    lexs = {lx.latent: lx for lx in exm.load(run_dir / "examples.jsonl")[1]}
    for lat, exs in inp.examples.items():
        assert all(isinstance(e, Window) for e in exs)
        assert exs == scoring.select_examples(lexs[lat], n_pos=3, n_neg=2)


class ReversingScorer(WordOverlapScorer):
    """Returns its scored examples in reverse order plus one extra example (as fuzzing's active
    mode adds): the playground must still align scores by example id."""

    name = "reversing"

    def score(self, explanations, examples):
        out = []
        for r in super().score(explanations, examples):
            extra = ScoredExample(r.latent, "999:0:wrong", "x", False, None, score=-1.0)
            out.append(make_result(r.latent, self.name, r.explanation, [*reversed(r.examples), extra]))
        return out


def test_playground_scores_align_with_the_examples_shown(run_dir):
    inp = scoring.load_inputs(run_dir)
    play = scoring.playground_scorer(ReversingScorer(), inp)
    auroc, scores = play(1, "alpha delta")
    direct = WordOverlapScorer().score({1: "alpha delta"}, {1: inp.examples[1]})[0]
    assert scores == [e.score for e in direct.examples]  # same order as inp.examples[1]
    assert not math.isnan(auroc)


class BinaryScorer(WordOverlapScorer):
    """0/1 predictions only (a judge without logprobs): AUROC is NaN, balanced accuracy is not."""

    name = "binary"

    def score(self, explanations, examples):
        return [make_result(r.latent, self.name, r.explanation,
                            [ScoredExample(e.latent, e.example_id, e.text, e.label, e.quantile,
                                           prediction=int(e.score > 0)) for e in r.examples])
                for r in super().score(explanations, examples)]


def test_binary_scorers_compare_balanced_accuracy(run_dir):
    inp = scoring.load_inputs(run_dir)
    run = run_with_control(BinaryScorer(), inp.explanations, inp.examples, seed=0)
    assert run.metric == "balanced_accuracy" and run.comparison.diff.n == 3
    assert "balanced accuracy" in scoring.verdict(run)
    assert all(not math.isnan(v.mean) for v in scoring.quantile_curves(run)["real"].values())  # recall
    path = scoring.write_scores(run_dir, run, inp, name="binary_variant")
    assert path.name == "binary_variant.jsonl" and results.read(path)[0]["metric"] == "balanced_accuracy"


def test_fewer_examples_than_bins_are_spread_over_the_whole_range():
    act = tuple(_ex(8, r, (1, 2), r % 10, "activating") for r in range(30))  # 10 bins, 3 each
    lex = LatentExamples(8, 1.0, 30, test_activating=act, test_negative=(_ex(8, 99, (5,), None, "random"),))
    got = [e.quantile for e in scoring.select_examples(lex, n_pos=3, n_neg=1) if e.label]
    assert got[0] == 0 and got[-1] == 9 and len(set(got)) == 3  # strongest, middle, weakest
    assert [e.quantile for e in scoring.select_examples(lex, n_pos=10) if e.label] == list(range(10))
    more = [e.quantile for e in scoring.select_examples(lex, n_pos=13) if e.label]
    assert len(more) == 13 and set(more) == set(range(10))  # every bin once, then round two
    assert scoring.spread_bins(list(range(10)), 3) == [0, 4, 9, 1, 2, 3, 5, 6, 7, 8]
    assert scoring.spread_bins([0, 1], 5) == [0, 1] and scoring.spread_bins([0, 3, 7], 1) == [0, 3, 7]
