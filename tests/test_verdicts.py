"""One verdict function for every comparison, and the chapters' sentences that follow from it:
a difference whose CI lies below 0 is "worse than the control", never "not distinguishable"."""
from __future__ import annotations


import pytest

from autointerp import metrics, planted, scoring, steering
from autointerp.metrics import NAN, LatentMetrics, MeanWithCI, PairedComparison
from autointerp.records import ScorerResult
from autointerp.scorers import ScoreRun
from autointerp.scorers import intervention as iv


def ci(mean: float, low: float, high: float, n: int = 8) -> MeanWithCI:
    return MeanWithCI(mean, low, high, n, 0, 2000)


@pytest.mark.parametrize("diff, expected", [
    (ci(0.2, 0.05, 0.4), metrics.ABOVE),
    (ci(-0.5, -1.03, -0.04), metrics.BELOW),
    (ci(0.1, -0.1, 0.3), metrics.NOT_DISTINGUISHABLE),
    (ci(0.0, 0.0, 0.0), metrics.NOT_DISTINGUISHABLE),  # a CI touching 0 does not exclude it
    (ci(0.3, 0.2, 0.4, n=4), metrics.TOO_FEW),  # under MIN_LATENTS_FOR_CLAIM
    (ci(-0.3, -0.4, -0.2, n=2), metrics.TOO_FEW),
    (ci(NAN, NAN, NAN, n=0), metrics.TOO_FEW),  # every answer failed
])
def test_verdict_covers_every_outcome(diff, expected):
    assert metrics.verdict(diff) == expected
    assert metrics.verdict(diff, min_latents=1) in metrics.VERDICTS


def _score_run(diff: MeanWithCI) -> ScoreRun:
    side = ci(0.5, 0.4, 0.6, diff.n)
    return ScoreRun([], [], PairedComparison(side, side, diff, 0.5), 0.0, "auroc")


def test_scoring_verdict_names_a_difference_below_zero():
    text = scoring.verdict(_score_run(ci(-0.2, -0.35, -0.05)))
    assert "WORSE" in text and "not distinguishable" not in text and "investigate" in text
    assert "not distinguishable" in scoring.verdict(_score_run(ci(0.0, -0.1, 0.1)))
    assert "excludes 0" in scoring.verdict(_score_run(ci(0.2, 0.1, 0.3)))
    assert "too few" in scoring.verdict(_score_run(ci(0.2, 0.1, 0.3, n=3)))


def _res(lat: int, score: float, control: str | None = None) -> ScorerResult:
    m = LatentMetrics(lat, n_pos=4, n_neg=0, n_failed=0, balanced_accuracy=NAN, precision=NAN,
                      recall=NAN, f1=NAN, auroc=NAN, mean_score=score, sem=0.1)
    return ScorerResult(lat, "intervention", f"e{lat}", (), m, control,
                        details={"strength": 1.0, "strength_rel": 1.0, "achieved_kl": 0.5,
                                 "target_kl": 0.5, "raised": []})


def test_intervention_verdict_says_worse_and_compares_maxima_with_maxima():
    # the chapter-07 case seen on demo: trained explanations well below shuffled ones
    trained = [_res(j, s) for j, s in enumerate([-0.9, -0.4, -0.6, -0.2, -0.8, -0.3])]
    shuffled = [_res(j, s, iv.SHUFFLED) for j, s in enumerate([0.3, 0.2, 0.4, 0.1, 0.5, 0.2])]
    run = steering.InterventionRun({"trained": trained, iv.SHUFFLED: shuffled, iv.RANDOM_SAE: [],
                                    "input_explanation": []}, {}, {})
    text = steering.verdict(run)
    line = next(x for x in text.splitlines() if x.startswith("trained - shuffled"))
    assert "WORSE" in line and "NOT distinguishable" not in line
    maxima = next(x for x in text.splitlines() if x.startswith("Maxima"))
    assert "3.37" in maxima and f"trained {max(r.metrics.mean_score for r in trained):+.2f}" in maxima
    means = [x for x in text.splitlines() if "3.37" in x]
    assert means == [maxima]  # the reference's maxima sit beside this run's maxima only


def test_planted_exam_reads_the_same_verdict():
    assert planted.EXAM[metrics.verdict(ci(0.2, 0.1, 0.3))] == planted.SEPARATES
    assert planted.EXAM[metrics.verdict(ci(-0.2, -0.3, -0.1))] == planted.INVERTED
    assert planted.EXAM[metrics.verdict(ci(0.0, -0.1, 0.1))] == planted.AT_CHANCE
    assert planted.EXAM[metrics.verdict(ci(0.2, 0.1, 0.3, n=2))] == planted.TOO_FEW
    assert set(planted.EXAM) == set(metrics.VERDICTS)


def _judged(lat: int, answers: list[int | None], probs: list[float | None]) -> ScorerResult:
    from autointerp.records import ScoredExample
    from autointerp.scorers import make_result

    exs = [ScoredExample(lat, str(i), "x", i % 2 == 0, 0 if i % 2 == 0 else None, score=p, prediction=a)
           for i, (a, p) in enumerate(zip(answers, probs))]
    return make_result(lat, "detection", "e", exs)


def test_judge_behaviour_names_a_yes_sayer_and_all_tied_latents():
    from autointerp import judging

    yes = [_judged(0, [1, 1, 1, 1], [0.8, 0.8, 0.8, 0.8]), _judged(1, [1, 1, None, 1], [0.9, 0.7, None, 0.6])]
    b = judging.judge_behaviour(yes)
    assert (b["n_answers"], b["n_one"], b["tied"]) == (7, 7, [0]) and b["share_one"] == 1.0
    assert yes[0].metrics.auroc == 0.5 and yes[0].metrics.recall == 1.0  # what the tables showed
    note = judging.behaviour_note(b)
    assert "1 on 7 of 7" in note and "yes to almost everything" in note and "no signal" in note
    mixed = judging.behaviour_note(judging.judge_behaviour([_judged(2, [1, 0, 0, 1], [0.9, 0.2, 0.4, 0.6])]))
    assert "yes to almost" not in mixed and "no signal" not in mixed and "2 of 4" in mixed
    assert "no answer" in judging.behaviour_note(judging.judge_behaviour([_judged(3, [None], [None])]))
    assert judging.behaviour_figure(b).data


def test_verdict_grades_a_marginal_exam_and_explains_a_control_above_chance():
    run = _score_run(ci(0.05, 0.01, 0.1))
    marginal = {"summary": "s", "diff_ci": (0.006, 0.241), "verdict": planted.SEPARATES}
    text = scoring.verdict(run, marginal)
    assert "only just" in text and "The scorer works" not in text
    clear = {"summary": "s", "diff_ci": (0.12, 0.45), "verdict": planted.SEPARATES}
    assert "The scorer works" in scoring.verdict(run, clear)
    # _score_run's control sits at 0.5: no note; above chance: the note says why
    assert "above chance" not in text
    side = ci(0.62, 0.55, 0.7)
    high = ScoreRun([], [], PairedComparison(ci(0.7, 0.6, 0.8), side, ci(0.08, 0.02, 0.15), 0.6), 0.0, "auroc")
    assert "sits at 0.620, above chance" in scoring.verdict(high)
