"""The scorer contract: every scorer takes the same input and returns the same result type.

A scorer has a ``name`` and ``score(explanations, examples)``: ``explanations`` maps latent ->
text, ``examples`` maps latent -> ``records.Window`` records (activating and not); it returns one
``records.ScorerResult`` per latent. Every scorer runs next to a control: by default the
shuffled-explanation control (every latent gets another latent's explanation); a scorer that
needs another control (the intruder test's mixed windows) provides ``score_control(explanations,
examples, seed=...)``. ``run_with_control`` runs both, ``compare`` is the one bootstrap comparison
and ``write_run`` the one writer (``results.write`` with the ``scores`` schema).
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .. import results
from ..metrics import (NAN, LatentMetrics, PairedComparison, latent_metrics, mean_ci,
                       paired_difference, unpaired_difference, verdict)
from ..records import ScoredExample, ScorerResult, Window

SHUFFLED = "shuffled"
METRIC_LABELS = {"auroc": "AUROC", "balanced_accuracy": "balanced accuracy", "f1": "F1",
                 "correlation": "Pearson r", "accuracy": "accuracy", "mean_score": "mean score"}
CHANCE = {"auroc": 0.5, "balanced_accuracy": 0.5, "correlation": 0.0, "mean_score": 0.0}


@runtime_checkable
class Scorer(Protocol):
    """What every scorer provides."""

    name: str

    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[Window]]) -> list[ScorerResult]:
        """Score each latent of ``explanations`` on its ``examples``."""
        ...


def check_inputs(explanations: Mapping[int, str], examples: Mapping[int, Sequence[Any]]) -> list[int]:
    """The latents to score (sorted), after checking both mappings agree; clear errors if not."""
    missing = sorted(set(explanations) - set(examples))
    if missing:
        raise ValueError(f"No examples for latents {missing[:10]}: pass examples for every latent "
                         "in explanations (or drop those latents from explanations).")
    for lat, text in explanations.items():
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"Latent {lat}: explanation {text!r} is not a non-empty string; drop "
                             "latents whose explainer failed before scoring.")
        exs = examples[lat]
        if not exs:
            raise ValueError(f"Latent {lat}: empty example list.")
        odd = [type(e).__name__ for e in exs if not hasattr(e, "latent")]
        if odd:
            raise TypeError(f"Latent {lat}: examples must be records.Window records, got {odd[0]}; "
                            "build them with examples.build or scoring.load_inputs.")
        wrong = [getattr(e, "id", getattr(e, "example_id", "?")) for e in exs if e.latent != lat]
        if wrong:
            raise ValueError(f"Latent {lat}: examples {wrong[:5]} belong to another latent.")
    return sorted(explanations)


def check_windows(name: str, examples: Mapping[int, Sequence[Any]]) -> None:
    """Every example must be a ``records.Window``: one clear error otherwise."""
    for lat, exs in examples.items():
        for e in exs:
            if not isinstance(e, Window):
                raise TypeError(f"{name}: examples must be records.Window records (token ids and "
                                f"activations), got {type(e).__name__} for latent {lat}; build them with "
                                "examples.build or scoring.load_inputs.")


def make_result(latent: int, scorer: str, explanation: str, scored: Sequence[ScoredExample], *,
                control: str | None = None, usage: Mapping[str, Any] | None = None,
                details: Mapping[str, Any] | None = None) -> ScorerResult:
    """A ``ScorerResult`` with its metrics (AUROC from scores, binary metrics from predictions,
    per-quantile curve) computed from the scored examples."""
    has_s = any(e.score is not None for e in scored)
    has_p = any(e.prediction is not None for e in scored)
    m = latent_metrics(latent, [e.label for e in scored],
                       scores=[e.score for e in scored] if has_s else None,
                       predictions=[e.prediction for e in scored] if has_p else None,
                       quantiles=[e.quantile for e in scored])
    return ScorerResult(latent=latent, scorer=scorer, explanation=explanation,
                        examples=tuple(scored), metrics=m, control=control,
                        usage=dict(usage or {}), details=dict(details or {}))


def shuffled_explanations(explanations: Mapping[int, str], seed: int = 0) -> dict[int, str]:
    """A seeded uniform derangement: every latent gets the explanation of another latent.

    Depends only on the set of latents (sorted), not on the mapping's order. Latents whose
    explanations are identical strings may still receive the same text.
    """
    keys = sorted(explanations)
    if len(keys) < 2:
        raise ValueError(f"Shuffling needs at least 2 explained latents, got {len(keys)}.")
    rng = np.random.default_rng(seed)
    idx = np.arange(len(keys))
    while True:  # rejection sampling: P(derangement) -> 1/e, so ~3 draws on average
        perm = rng.permutation(len(keys))
        if not (perm == idx).any():
            break
    return {k: explanations[keys[j]] for k, j in zip(keys, perm)}


def score_control(scorer: Scorer, explanations: Mapping[int, str],
                  examples: Mapping[int, Sequence[Window]], seed: int = 0) -> list[ScorerResult]:
    """The scorer's control: its own ``score_control`` if it has one, else shuffled explanations."""
    own = getattr(scorer, "score_control", None)
    if own is not None:
        return own(explanations, examples, seed=seed)
    shuffled = shuffled_explanations(explanations, seed)
    return [dataclasses.replace(r, control=SHUFFLED, usage={**r.usage, "shuffle_seed": seed})
            for r in scorer.score(shuffled, examples)]


def primary_metric(results_: Sequence[ScorerResult]) -> str:
    """"auroc" when any latent has one (the scorer gave scores), else "balanced_accuracy"
    (0/1 predictions only, e.g. a judge endpoint that serves no logprobs)."""
    return ("auroc" if any(not np.isnan(r.metrics.auroc) for r in results_)
            else "balanced_accuracy")


def by_latent(results_: Sequence[ScorerResult], metric: str = "auroc") -> dict[int, float]:
    """latent -> one metric (a ``LatentMetrics`` field name)."""
    return {r.latent: float(getattr(r.metrics, metric)) for r in results_}


def compare(real: Sequence[ScorerResult], control: Sequence[ScorerResult], metric: str = "auroc",
            *, paired: bool = True, n_boot: int = 2000, seed: int = 0) -> PairedComparison:
    """Real vs control on one metric: the mean difference over latents with a bootstrap CI.
    ``paired`` resamples latents with both conditions together (the same latents, e.g. real vs
    shuffled explanations); unpaired resamples each side on its own (other latents, e.g. a
    random SAE's), and ``frac_real_better`` is then NaN."""
    a, b = by_latent(real, metric), by_latent(control, metric)
    if paired:
        return paired_difference(a, b, n_boot=n_boot, seed=seed)
    va, vb = list(a.values()), list(b.values())
    return PairedComparison(real=mean_ci(va, n_boot=n_boot, seed=seed),
                            control=mean_ci(vb, n_boot=n_boot, seed=seed),
                            diff=unpaired_difference(va, vb, n_boot=n_boot, seed=seed),
                            frac_real_better=NAN)


@dataclass(frozen=True)
class ScoreRun:
    """One scorer on one set of inputs: real results, its control, and their comparison."""

    real: list[ScorerResult]
    control: list[ScorerResult]
    comparison: PairedComparison
    seconds: float
    metric: str = "auroc"  # the LatentMetrics field compared


def run_with_control(scorer: Scorer, explanations: Mapping[int, str],
                     examples: Mapping[int, Sequence[Window]], *, seed: int = 0,
                     metric: str | None = None, resume: str | Path | None = None,
                     chunk: int = 16) -> ScoreRun:
    """Score real explanations and the scorer's control; ``metric`` (default: ``primary_metric``)
    compared with a paired bootstrap CI. With ``resume`` (a run's ``progress`` folder) latents go
    in chunks of ``chunk`` and each finished latent is recorded there (``progress.Progress``), so
    a killed run resumes where it stopped, with identical results."""
    t0 = time.perf_counter()
    if resume is None:
        real = scorer.score(explanations, examples)
        control = score_control(scorer, explanations, examples, seed=seed)
    else:
        real, control = _resumable(scorer, explanations, examples, seed, Path(resume), chunk)
    metric = metric or primary_metric(real)
    return ScoreRun(real, control, compare(real, control, metric, seed=seed),
                    round(time.perf_counter() - t0, 2), metric)


def _resumable(scorer: Scorer, explanations: Mapping[int, str] | None, examples: Mapping[int, Sequence[Window]],
               seed: int, root: Path, chunk: int) -> tuple[list[ScorerResult], list[ScorerResult]]:
    """Real and control results chunk by chunk, each latent's pair kept as it finishes. A scorer
    with its own control (the intruder tests: ``explanations`` None) has its trials built once
    from every latent, as without ``resume``, then judged chunk by chunk."""
    from ..progress import Progress

    settings, prompt_hash = scorer_settings(scorer)
    common = {"scorer": scorer.name, "settings": settings, "prompt_hash": prompt_hash, "seed": seed, "chunk": chunk}
    if getattr(scorer, "score_trials", None) is not None:
        keys = sorted(examples)
        trials = {False: scorer.trials(examples), True: scorer.trials(examples, control=True)}
        prog = Progress(root, scorer.name, {**common, "trials": results.digest(results.plain(trials[False] + trials[True]))})

        def score_part(part: list[int]) -> tuple[list[ScorerResult], list[ScorerResult]]:
            return tuple(scorer.score_trials([t for t in trials[c] if t.latent in part]) for c in (False, True))
    else:
        keys = sorted(explanations)
        shuffled = shuffled_explanations(explanations, seed)
        prog = Progress(root, scorer.name, {
            **common, "explanations": [[k, explanations[k], shuffled[k]] for k in keys],
            "examples": results.digest({str(k): results.plain(list(examples[k])) for k in keys})})

        def score_part(part: list[int]) -> tuple[list[ScorerResult], list[ScorerResult]]:
            exs = {k: examples[k] for k in part}
            return (scorer.score({k: explanations[k] for k in part}, exs),
                    [dataclasses.replace(x, control=SHUFFLED, usage={**x.usage, "shuffle_seed": seed})
                     for x in scorer.score({k: shuffled[k] for k in part}, exs)])
    return _by_chunk(prog, keys, chunk, score_part)


def _by_chunk(prog, keys: Sequence[int], chunk: int, score_part) -> tuple[list[ScorerResult], list[ScorerResult]]:
    """``score_part(latents) -> (real, control)`` over chunks of ``keys``; a chunk with an
    unfinished latent is scored whole again (the same batches as a fresh run), and each latent
    whose calls all came back is recorded in ``prog``."""
    from ..progress import result_from, settled

    real, control = [], []
    for i in range(0, len(keys), chunk):
        part = list(keys[i:i + chunk])
        recs = {k: prog.get(str(k)) for k in part}
        if any(v is None for v in recs.values()):
            r, c = ({x.latent: x for x in side} for side in score_part(part))
            for k in part:
                recs[k] = {"real": results.plain(r.get(k)), "control": results.plain(c.get(k))}
                if settled(r.get(k)) and settled(c.get(k)):
                    prog.put(str(k), recs[k])
        for k in part:  # one form either way (through JSON), so a resumed run equals a fresh one
            real += [result_from(recs[k]["real"])] if recs[k]["real"] else []
            control += [result_from(recs[k]["control"])] if recs[k]["control"] else []
    return real, control


def results_frame(results_: Sequence[ScorerResult]):
    """One row per result: latent, scorer, control, explanation and the scalar metrics."""
    import pandas as pd

    rows = []
    for r in results_:
        m = {f.name: getattr(r.metrics, f.name) for f in dataclasses.fields(r.metrics)
             if f.name not in ("latent", "by_quantile")}
        rows.append({"latent": r.latent, "scorer": r.scorer, "control": r.control,
                     "explanation": r.explanation, **m})
    return pd.DataFrame(rows)


def scorer_settings(scorer: Any) -> tuple[dict[str, Any], str | None]:
    """``(settings, prompt_hash)`` a scorer reports about itself (empty when it has none)."""
    s = getattr(scorer, "settings", None)
    return (dict(s) if isinstance(s, Mapping) else {}), getattr(scorer, "prompt_hash", None)


def write_run(path: str | Path, run: ScoreRun, *, scorer: Any = None,
              per_latent: Mapping[int, Mapping[str, Any]] | None = None, **header: Any) -> Path:
    """The one writer of scores: ``results.write(path, "scores", ...)`` with the run's metric,
    comparison, its ``metrics.verdict`` and seconds in the header (plus the scorer's settings and prompt hash, and
    ``header``), then one record per result, real then control, each extended by
    ``per_latent[latent]`` (e.g. which explainer wrote the explanation)."""
    settings, prompt_hash = scorer_settings(scorer)
    settings = header.pop("settings", None) or settings
    name = header.pop("name", None) or (run.real[0].scorer if run.real else "scores")
    extra = per_latent or {}
    recs = [{**results.plain(r), **extra.get(r.latent, {})} for r in [*run.real, *run.control]]
    head = {"scorer": name, "metric": run.metric, "seconds": run.seconds,
            "comparison": run.comparison, "verdict": verdict(run.comparison.diff), **header}
    return results.write(path, "scores", recs, settings=settings,
                         prompt_hash=prompt_hash, **head)


__all__ = ["SHUFFLED", "METRIC_LABELS", "CHANCE", "Scorer", "check_inputs", "check_windows",
           "make_result", "shuffled_explanations", "score_control", "primary_metric", "by_latent",
           "compare", "ScoreRun", "run_with_control", "results_frame", "scorer_settings", "write_run",
           "LatentMetrics", "ScoredExample", "ScorerResult", "Window"]
