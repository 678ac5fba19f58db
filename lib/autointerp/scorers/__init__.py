"""The shared scorer interface: example and result records, the ``Scorer`` protocol, the
shuffled-explanation control and helpers that turn results into tables and comparisons.

A scorer takes ``explanations`` (latent -> text) and ``examples`` (latent -> ``ExampleText``s,
activating and not) and returns one ``ScorerResult`` per explained latent. Every scorer must also
be run on ``shuffled_explanations(...)`` as a control (``score_with_control`` does both).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ..metrics import LatentMetrics, PairedComparison, latent_metrics, paired_difference

SHUFFLED = "shuffled"


@dataclass(frozen=True)
class ExampleText:
    """One test example as text: activating (``label=True``, with its quantile bin, 0 = top)
    or not (``quantile=None``). ``example_id`` is any stable id, e.g. ``"row:start"``."""

    latent: int
    example_id: str | int
    text: str
    label: bool
    quantile: int | None = None


@dataclass(frozen=True)
class ScoredExample:
    """One example after scoring: ``score`` (continuous, higher = more like the explanation)
    and/or ``prediction`` (0/1); None where the scorer gives none or failed on it."""

    latent: int
    example_id: str | int
    text: str
    label: bool
    quantile: int | None
    score: float | None = None
    prediction: int | None = None


@dataclass(frozen=True)
class ScorerResult:
    """One latent scored by one scorer with one explanation. ``control`` is None for the real
    explanation, ``"shuffled"`` for the shuffled-explanation control."""

    latent: int
    scorer: str
    explanation: str
    examples: tuple[ScoredExample, ...]
    metrics: LatentMetrics
    control: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)  # model, timings, tokens, settings


@runtime_checkable
class Scorer(Protocol):
    """What every scorer provides."""

    name: str

    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[ExampleText]]) -> list[ScorerResult]:
        """Score each latent of ``explanations`` on its ``examples``."""
        ...


def as_texts(examples: Sequence[Any], tokenizer) -> list[ExampleText]:
    """``examples.Example`` records as ``ExampleText``: label True with its quantile for activating
    windows, False for the rest; id ``"row:start"``; text = the token ids decoded together."""
    return [ExampleText(e.latent, f"{e.row}:{e.start}",
                        tokenizer.decode(list(e.token_ids), skip_special_tokens=True),
                        e.kind == "activating", None if e.quantile is None else int(e.quantile))
            for e in examples]


def check_inputs(explanations: Mapping[int, str],
                 examples: Mapping[int, Sequence[ExampleText]]) -> list[int]:
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
        wrong = [e.example_id for e in exs if e.latent != lat]
        if wrong:
            raise ValueError(f"Latent {lat}: examples {wrong[:5]} belong to another latent.")
    return sorted(explanations)


def make_result(latent: int, scorer: str, explanation: str, scored: Sequence[ScoredExample], *,
                control: str | None = None, usage: Mapping[str, Any] | None = None) -> ScorerResult:
    """Build a ``ScorerResult`` with its metrics (AUROC from scores, binary metrics from
    predictions, per-quantile curve) computed from the scored examples."""
    has_s = any(e.score is not None for e in scored)
    has_p = any(e.prediction is not None for e in scored)
    m = latent_metrics(latent, [e.label for e in scored],
                       scores=[e.score for e in scored] if has_s else None,
                       predictions=[e.prediction for e in scored] if has_p else None,
                       quantiles=[e.quantile for e in scored])
    return ScorerResult(latent=latent, scorer=scorer, explanation=explanation,
                        examples=tuple(scored), metrics=m, control=control,
                        usage=dict(usage or {}))


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


def score_with_control(scorer: Scorer, explanations: Mapping[int, str],
                       examples: Mapping[int, Sequence[ExampleText]],
                       seed: int = 0) -> tuple[list[ScorerResult], list[ScorerResult]]:
    """Score real explanations and the shuffled control: ``(real, control)``."""
    real = scorer.score(explanations, examples)
    shuffled = shuffled_explanations(explanations, seed)
    control = [dataclasses.replace(r, control=SHUFFLED,
                                   usage={**r.usage, "shuffle_seed": seed})
               for r in scorer.score(shuffled, examples)]
    return real, control


METRIC_LABELS = {"auroc": "AUROC", "balanced_accuracy": "balanced accuracy", "f1": "F1",
                 "correlation": "Pearson r"}
CHANCE = {"auroc": 0.5, "balanced_accuracy": 0.5, "correlation": 0.0}


def primary_metric(results: Sequence[ScorerResult]) -> str:
    """"auroc" when any latent has one (the scorer gave scores), else "balanced_accuracy"
    (0/1 predictions only, e.g. a judge endpoint that serves no logprobs)."""
    return ("auroc" if any(not np.isnan(r.metrics.auroc) for r in results)
            else "balanced_accuracy")


def by_latent(results: Sequence[ScorerResult], metric: str = "auroc") -> dict[int, float]:
    """latent -> one metric (a ``LatentMetrics`` field name)."""
    return {r.latent: float(getattr(r.metrics, metric)) for r in results}


def compare(real: Sequence[ScorerResult], control: Sequence[ScorerResult], metric: str = "auroc",
            *, n_boot: int = 2000, seed: int = 0) -> PairedComparison:
    """Real vs control on one metric: mean difference over latents with a paired bootstrap CI."""
    return paired_difference(by_latent(real, metric), by_latent(control, metric),
                             n_boot=n_boot, seed=seed)


def results_frame(results: Sequence[ScorerResult]):
    """One row per result: latent, scorer, control, explanation and the scalar metrics."""
    import pandas as pd

    rows = []
    for r in results:
        m = {f.name: getattr(r.metrics, f.name) for f in dataclasses.fields(r.metrics)
             if f.name not in ("latent", "by_quantile")}
        rows.append({"latent": r.latent, "scorer": r.scorer, "control": r.control,
                     "explanation": r.explanation, **m})
    return pd.DataFrame(rows)


__all__ = ["ExampleText", "ScoredExample", "ScorerResult", "Scorer", "SHUFFLED", "as_texts", "check_inputs",
           "make_result", "shuffled_explanations", "score_with_control", "by_latent", "compare",
           "primary_metric", "METRIC_LABELS", "CHANCE",
           "results_frame"]
