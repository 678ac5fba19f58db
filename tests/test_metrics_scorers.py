"""Metrics against independent computations, the scorer interface, and scorers on "latents" with
a known meaning (activating texts on one topic, negatives on another): a true explanation must
rank them better than another latent's explanation."""
from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from conftest import WordTokenizer
from scipy.stats import mannwhitneyu

from autointerp import metrics as mx
from autointerp import results
from autointerp.records import Window, window_text
from autointerp.scorers import (ScoredExample, Scorer, check_inputs, compare, make_result,
                                results_frame, run_with_control, shuffled_explanations)

# -- known-meaning latents ----------------------------------------------------------------------
TOPICS = {
    0: ("the sea, ships and sailing",
        ["The ship sailed out of the harbour as the tide turned.",
         "Waves crashed against the hull while the sailors raised the mainsail.",
         "The captain steered the boat across the open ocean toward the island.",
         "Salt spray covered the deck of the old fishing vessel at sea.",
         "The sailors dropped anchor in the calm bay before the storm.",
         "A lighthouse guided the ships safely along the rocky coast."],
        ["Chop the onions and fry them gently in butter until golden.",
         "Bake the bread in a hot oven for forty minutes.",
         "Stir the soup and add a pinch of salt and pepper.",
         "Whisk the eggs with sugar, then fold in the flour.",
         "Roast the chicken with garlic, lemon and fresh thyme.",
         "Simmer the tomato sauce slowly for an hour."]),
    1: ("numbers and arithmetic",
        ["Seven plus five equals twelve.",
         "If you multiply 6 by 8 you get 48.",
         "The sum of 23 and 19 is 42.",
         "Divide 100 by 4 and the answer is 25.",
         "Subtract 9 from 30 to get 21.",
         "Three times three is nine, and nine squared is eighty-one."],
        ["The cat slept on the warm windowsill all afternoon.",
         "A fox crept quietly through the tall grass.",
         "The elephant sprayed water over its back with its trunk.",
         "Two rabbits nibbled clover at the edge of the field.",
         "The dog barked at the squirrel in the oak tree.",
         "An owl hooted from the branches of the barn."]),
    2: ("music and musical instruments",
        ["She played a gentle melody on the piano.",
         "The violinist tuned her strings before the concert.",
         "The band's drummer kept a steady rhythm all night.",
         "He strummed a few chords on his old guitar.",
         "The orchestra performed a symphony by Beethoven.",
         "A trumpet solo rang out over the jazz club."],
        ["Heavy rain is expected across the region tomorrow.",
         "The forecast calls for strong winds and snow showers.",
         "A thick fog covered the valley this morning.",
         "Temperatures will fall below freezing tonight.",
         "Thunderstorms may bring hail in the afternoon.",
         "The sun will return by the weekend with mild weather."]),
}
EXPLANATIONS = {lat: t[0] for lat, t in TOPICS.items()}


WORDS = WordTokenizer()


def topic_window(lat: int, row: int, text: str, label: bool, quantile: int | None, tokenizer) -> Window:
    """A window whose token ids decode (``records.window_text``) to exactly ``text``."""
    ids = tuple(tokenizer.encode(text, add_special_tokens=False))
    acts = (1.0 if label else 0.0,) * len(ids)
    w = Window(lat, row, 0, ids, acts, max(acts), quantile, "activating" if label else "random")
    assert window_text(w, tokenizer) == text
    return w


def topic_examples(per_class: int = 6, tokenizer=WORDS) -> dict[int, list[Window]]:
    """Per latent: activating windows (rows 0..) on its topic, negatives (rows 100..) off it."""
    out = {}
    for lat, (_, pos, neg) in TOPICS.items():
        exs = [topic_window(lat, i, t, True, i % 3, tokenizer) for i, t in enumerate(pos[:per_class])]
        exs += [topic_window(lat, 100 + i, t, False, None, tokenizer) for i, t in enumerate(neg[:per_class])]
        out[lat] = exs
    return out


# -- metrics --------------------------------------------------------------------------------------
def test_auroc_matches_mann_whitney_and_brute_force_pair_count_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(5):
        s = np.round(rng.normal(size=37), 1)  # rounding creates ties
        y = rng.random(37) < 0.4
        pos, neg = s[y], s[~y]
        pairs = sum((a > b) + 0.5 * (a == b) for a, b in itertools.product(pos, neg))
        brute = pairs / (len(pos) * len(neg))
        u = mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg))
        assert mx.auroc(s, y) == pytest.approx(brute, abs=1e-12)
        assert mx.auroc(s, y) == pytest.approx(u, abs=1e-12)
    assert mx.auroc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5
    assert mx.auroc([3, 2, 1], [1, 1, 0]) == 1.0 and mx.auroc([1, 2, 3], [1, 1, 0]) == 0.0


def test_undefined_metrics_are_nan_not_errors():
    assert math.isnan(mx.auroc([0.3, 0.9], [True, True]))
    assert math.isnan(mx.auroc([], []))
    m = mx.latent_metrics(5, [True, True, True], scores=[0.1, 0.2, 0.3], predictions=[0, 1, 1],
                          quantiles=[0, 0, 1])
    assert math.isnan(m.auroc) and math.isnan(m.balanced_accuracy)
    assert m.recall == pytest.approx(2 / 3) and m.precision == 1.0
    none_pred = mx.binary_metrics([0, 0, 0, 0], [1, 0, 1, 0])
    assert math.isnan(none_pred["precision"]) and math.isnan(none_pred["f1"])
    assert none_pred["balanced_accuracy"] == 0.5 and none_pred["recall"] == 0.0
    with pytest.raises(ValueError, match="NaN"):
        mx.auroc([0.1, float("nan")], [1, 0])


def test_binary_metrics_by_hand_and_failed_examples():
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    p = [1, 1, 1, 0, 1, 0, 0, 0, 0, 0]  # TP 3, FN 1, FP 1, TN 5
    b = mx.binary_metrics(p, y)
    assert b["recall"] == pytest.approx(3 / 4)
    assert b["precision"] == pytest.approx(3 / 4)
    assert b["balanced_accuracy"] == pytest.approx((3 / 4 + 5 / 6) / 2)
    assert b["f1"] == pytest.approx(0.75)
    m = mx.latent_metrics(1, y + [1, 0], predictions=p + [None, None])
    assert m.n_failed == 2 and m.n_pos == 5
    assert m.balanced_accuracy == pytest.approx(b["balanced_accuracy"])
    assert math.isnan(m.auroc) and m.by_quantile == ()


def test_quantile_curve_is_auroc_of_each_bin_against_all_negatives():
    labels = [True] * 4 + [False] * 3
    quant = [0, 0, 1, 1, None, None, None]
    scores = [0.9, 0.8, 0.5, 0.1, 0.6, 0.3, 0.2]
    preds = [1, 1, 1, 0, 0, 0, 0]
    curve = mx.quantile_curve(labels, quant, scores, preds)
    assert [pt.quantile for pt in curve] == [0, 1] and [pt.n for pt in curve] == [2, 2]
    assert curve[0].auroc == 1.0  # both above every negative
    assert curve[1].auroc == pytest.approx((2 + 0) / 6)  # 0.5 beats 0.3, 0.2; 0.1 beats none
    assert curve[0].recall == 1.0 and curve[1].recall == 0.5
    pooled = mx.curve_over_latents([curve, curve], n_boot=50)
    assert pooled[1].mean == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="quantile"):
        mx.quantile_curve([True], [None], [0.1])


def test_mean_ci_contains_the_mean_is_seeded_and_skips_nan():
    rng = np.random.default_rng(1)
    v = list(rng.normal(0.7, 0.1, size=40)) + [float("nan")]
    a = mx.mean_ci(v, n_boot=500, seed=3)
    assert a.low < a.mean < a.high and a.n == 40 and a.n_nan == 1
    assert a.mean == pytest.approx(np.nanmean(v))
    assert a == mx.mean_ci(v, n_boot=500, seed=3)
    assert a != mx.mean_ci(v, n_boot=500, seed=4)
    assert 0.6 < a.low and a.high < 0.8
    assert math.isnan(mx.mean_ci([float("nan")]).mean)


def test_paired_difference_pairs_latents():
    real = {i: 0.6 + 0.01 * i for i in range(20)}
    control = {i: real[i] - 0.1 for i in range(20)}
    control[99] = 0.5  # unpaired: ignored
    real[7] = float("nan")  # NaN on one side: pair dropped
    c = mx.paired_difference(real, control, n_boot=300, seed=0)
    assert c.diff.mean == pytest.approx(0.1) and c.diff.n == 19
    assert c.diff.low == pytest.approx(0.1) and c.diff.high == pytest.approx(0.1)
    assert c.frac_real_better == 1.0
    with pytest.raises(ValueError, match="same latents"):
        mx.paired_difference({1: 0.5}, {2: 0.5})
    nan = float("nan")  # every answer failed: a NaN comparison with n = 0, not an exception
    empty = mx.paired_difference({1: nan, 2: 0.5}, {1: 0.4, 2: nan})
    assert empty.diff.n == 0 and math.isnan(empty.diff.mean) and math.isnan(empty.frac_real_better)


def test_results_roundtrip_with_header_and_nan(tmp_path):
    exs = [ScoredExample(3, "a", "x", True, 0, score=0.9),
           ScoredExample(3, "b", "y", False, None, score=0.1)]
    r1 = make_result(3, "toy", "expl", exs, usage={"seconds": 1.0})
    all_pos = [dataclasses.replace(e, latent=4, label=True, quantile=0) for e in exs]
    r2 = make_result(4, "toy", "other", all_pos, control="shuffled")
    path = results.write(tmp_path / "r.jsonl", "scores", [r1, r2], scorer="toy", seed=0)
    header, recs = results.read(path, kind="scores")
    assert header["schema"] == "autointerp.scores/1" and header["seed"] == 0
    assert [r["latent"] for r in recs] == [3, 4] and recs[1]["metrics"]["auroc"] is None  # NaN -> null
    df = results.frame(path)
    assert df.attrs["header"] == header
    assert header["scorer"] == "toy" and "packages" in header["provenance"]
    assert list(df["latent"]) == [3, 4] and df.loc[0, "metrics.auroc"] == 1.0
    assert math.isnan(df.loc[1, "metrics.auroc"]) and df.loc[1, "control"] == "shuffled"
    assert len(df.loc[0, "examples"]) == 2 and df.loc[0, "usage.seconds"] == 1.0
    table = results_frame([r1, r2])
    assert list(table.columns[:4]) == ["latent", "scorer", "control", "explanation"]
    (tmp_path / "bad.jsonl").write_text('{"latent": 1}\n')
    with pytest.raises(ValueError, match="header"):
        results.read(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="header"):
        results.frame(tmp_path / "bad.jsonl")
    with pytest.raises(ValueError, match="not 'validity'"):
        results.read(path, kind="validity")


# -- interface ------------------------------------------------------------------------------------
def test_shuffled_explanations_is_a_seeded_derangement():
    expl = {i: f"explanation {i}" for i in range(2, 40, 3)}
    for seed in range(20):
        sh = shuffled_explanations(expl, seed)
        assert set(sh) == set(expl)
        assert all(sh[k] != expl[k] for k in expl)
        assert sorted(sh.values()) == sorted(expl.values())  # a permutation of the texts
    assert shuffled_explanations(expl, 1) == shuffled_explanations(dict(reversed(expl.items())), 1)
    assert shuffled_explanations(expl, 1) != shuffled_explanations(expl, 2)
    assert shuffled_explanations({1: "a", 2: "b"}, 0) == {1: "b", 2: "a"}
    with pytest.raises(ValueError, match="at least 2"):
        shuffled_explanations({1: "a"})


def test_check_inputs_names_what_is_wrong():
    exs = topic_examples(2)
    assert check_inputs(EXPLANATIONS, exs) == [0, 1, 2]
    with pytest.raises(ValueError, match=r"No examples for latents \[7\]"):
        check_inputs({**EXPLANATIONS, 7: "x"}, exs)
    with pytest.raises(ValueError, match="non-empty string"):
        check_inputs({0: ""}, exs)
    with pytest.raises(ValueError, match="another latent"):
        check_inputs({0: "x"}, {0: exs[1]})


# -- embedding scorer ----------------------------------------------------------------------------
def test_embedding_ranks_the_true_explanation_above_wrong_ones():
    from autointerp.scorers.embedding import EmbeddingScorer, score_one

    scorer = EmbeddingScorer(WORDS, progress=False)
    assert isinstance(scorer, Scorer)
    exs = topic_examples()
    true = {r.latent: r.metrics.auroc for r in scorer.score(EXPLANATIONS, exs)}
    # every other latent's explanation, for every latent (both derangements of 3 latents)
    wrong = [{r.latent: r.metrics.auroc
              for r in scorer.score(shuffled_explanations(EXPLANATIONS, seed), exs)}
             for seed in (0, 1, 2, 3)]
    for lat in TOPICS:
        assert true[lat] > 0.7, (lat, true)
        # >=: with 6 vs 6 clear-cut texts both can sit at the ceiling of 1.0
        assert all(true[lat] >= w[lat] for w in wrong), (lat, true, wrong)
    assert np.mean(list(true.values())) > max(np.mean(list(w.values())) for w in wrong) + 0.05
    # an explanation of the negatives ranks them on top: AUROC near 0
    inverted = scorer.score({0: "cooking and recipes", 1: "animals", 2: "the weather"}, exs)
    assert all(r.metrics.auroc < 0.3 for r in inverted)
    res = scorer.score(EXPLANATIONS, exs)[0]
    assert len(res.metrics.by_quantile) == 3 and all(-1 <= e.score <= 1 for e in res.examples)
    live = score_one(EXPLANATIONS[0], TOPICS[0][1][:2] + TOPICS[0][2][:2], [1, 1, 0, 0])
    assert live.auroc == 1.0 and len(live.scores) == 4


# -- surprisal scorer ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def surprisal(subject):
    from autointerp.scorers.surprisal import SurprisalScorer

    return SurprisalScorer(subject, batch_size=4, progress=False)


@pytest.mark.slow
def test_surprisal_cached_prefix_equals_uncached_forward(surprisal):
    texts = ["x", "Add 7 and 5 to get 12.", TOPICS[0][1][1], TOPICS[2][2][0], "def f(a):\n    return a"]
    for desc in (EXPLANATIONS[0], surprisal.neutral):
        cached = surprisal.nll(desc, texts)  # batch_size 4: padding and two batches
        np.testing.assert_allclose(cached, surprisal.nll_uncached(desc, texts), atol=1e-4, rtol=0)
    assert surprisal._prefix_cache.get_seq_length() == len(surprisal.prefix_ids)  # never mutated


@pytest.mark.slow
def test_surprisal_prefers_true_explanations_to_shuffled(surprisal):
    run = run_with_control(surprisal, EXPLANATIONS, topic_examples(5, surprisal.tokenizer), seed=0)
    real, control = run.real, run.control
    assert [r.control for r in control] == ["shuffled"] * 3
    assert all(r.explanation != EXPLANATIONS[r.latent] for r in control)
    c = compare(real, control, n_boot=200)
    assert c.real.mean > c.control.mean and c.real.mean > 0.6, (c.real, c.control)
    # the same neutral NLL serves both runs: a score is NLL(neutral) - NLL(explanation)
    ex0 = real[0].examples[0]
    ref = (surprisal.nll_uncached(surprisal.neutral, [ex0.text])[0]
           - surprisal.nll_uncached(EXPLANATIONS[0], [ex0.text])[0])
    assert ex0.score == pytest.approx(ref, abs=1e-4)
