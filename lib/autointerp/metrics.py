"""Per-latent metrics, means over latents with bootstrap CIs, per-quantile curves, paired controls.

Conventions: a positive example is an activating window (``label=True``). Undefined values
(AUROC with one class absent, precision with no positive prediction, ...) are NaN, never an
error; means over latents skip NaN latents and report how many they used.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

NAN = float("nan")
# A bootstrap CI over fewer latents than this is no basis for a claim (with 2 latents a paired
# CI is just [min, max] of their differences): verdicts say "too few latents" instead.
MIN_LATENTS_FOR_CLAIM = 5

# The four outcomes of comparing a condition with its control (``verdict``).
ABOVE = "above the control"
BELOW = "below the control"
NOT_DISTINGUISHABLE = "not distinguishable from the control"
TOO_FEW = "too few latents"
VERDICTS = (ABOVE, BELOW, NOT_DISTINGUISHABLE, TOO_FEW)
# How a verdict reads when the comparison is one of the paper's claims (chapters 08 and 10).
READING = {ABOVE: "holds", BELOW: "does not hold (reversed)", NOT_DISTINGUISHABLE: "inconclusive at this scale",
           TOO_FEW: "inconclusive (too few latents)"}


@dataclass(frozen=True)
class QuantilePoint:
    """One activation-quantile bin (0 = strongest) of one latent.

    ``auroc``: AUROC of this bin's activating examples vs *all* the latent's negatives (score
    based scorers). ``recall``: fraction of this bin's activating examples predicted positive
    (binary scorers). Either is NaN when the scorer gives no scores / no predictions.
    """

    quantile: int
    n: int
    auroc: float
    recall: float


@dataclass(frozen=True)
class LatentMetrics:
    """Metrics of one latent over its scored examples (NaN where undefined)."""

    latent: int
    n_pos: int
    n_neg: int
    n_failed: int  # examples without a usable score/prediction (left out of the metrics)
    balanced_accuracy: float
    precision: float
    recall: float
    f1: float
    auroc: float
    by_quantile: tuple[QuantilePoint, ...] = ()
    # Pearson r of predicted vs true per-token activation (simulation scorers), NaN otherwise
    correlation: float = NAN
    # share of trials answered correctly (intruder scorers), NaN otherwise
    accuracy: float = NAN
    # mean of the examples' scores and its standard error (intervention: nats per prompt), NaN otherwise
    mean_score: float = NAN
    sem: float = NAN


@dataclass(frozen=True)
class MeanWithCI:
    """Mean over latents and its percentile-bootstrap CI (latents resampled with replacement)."""

    mean: float
    low: float
    high: float
    n: int  # latents used (non-NaN)
    n_nan: int  # latents left out because their value was NaN
    n_boot: int
    level: float = 0.95


@dataclass(frozen=True)
class PairedComparison:
    """Real vs control over the latents both define: mean difference with a paired bootstrap CI."""

    real: MeanWithCI
    control: MeanWithCI
    diff: MeanWithCI  # mean over latents of (real - control)
    frac_real_better: float  # fraction of paired latents where real > control


def verdict(diff: "MeanWithCI", min_latents: int = MIN_LATENTS_FOR_CLAIM) -> str:
    """THE reading of a difference (condition minus control) with its CI, one of ``VERDICTS``:
    ``TOO_FEW`` under ``min_latents`` latents (or no finite CI), ``ABOVE`` when the whole CI lies
    above 0, ``BELOW`` when it lies entirely below 0 (worse than the control: investigate), else
    ``NOT_DISTINGUISHABLE``."""
    if diff.n < min_latents or not (math.isfinite(diff.low) and math.isfinite(diff.high)):
        return TOO_FEW
    if diff.low > 0:
        return ABOVE
    if diff.high < 0:
        return BELOW
    return NOT_DISTINGUISHABLE


# -- single-latent metrics ----------------------------------------------------------------------
def auroc(scores: Sequence[float] | np.ndarray, labels: Sequence[bool] | np.ndarray) -> float:
    """AUROC = Mann-Whitney U / (n_pos * n_neg); ties count 1/2. NaN if a class is absent."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must be 1-D of equal length.")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN: drop failed examples before computing AUROC.")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = rankdata(s)  # average ranks for ties = the Mann-Whitney convention
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))


def binary_metrics(predictions: Sequence[int] | np.ndarray,
                   labels: Sequence[bool] | np.ndarray) -> dict[str, float]:
    """Balanced accuracy, precision, recall and F1 of 0/1 predictions (NaN where undefined)."""
    p = np.asarray(predictions).astype(bool)
    y = np.asarray(labels, dtype=bool)
    if p.shape != y.shape:
        raise ValueError(f"predictions {p.shape} and labels {y.shape} differ in shape.")
    tp, fp = int((p & y).sum()), int((p & ~y).sum())
    fn, tn = int((~p & y).sum()), int((~p & ~y).sum())
    recall = tp / (tp + fn) if tp + fn else NAN
    tnr = tn / (tn + fp) if tn + fp else NAN
    precision = tp / (tp + fp) if tp + fp else NAN
    if math.isnan(precision) or math.isnan(recall):
        f1 = NAN
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"balanced_accuracy": (recall + tnr) / 2, "precision": precision, "recall": recall,
            "f1": f1}


def quantile_curve(labels: Sequence[bool], quantiles: Sequence[int | None],
                   scores: Sequence[float | None] | None = None,
                   predictions: Sequence[int | None] | None = None) -> tuple[QuantilePoint, ...]:
    """Per quantile bin of the activating examples: AUROC vs all negatives, and recall.

    Examples whose score / prediction is None are left out of that measure.
    """
    y = np.asarray(labels, dtype=bool)
    q = np.array([-1 if v is None else int(v) for v in quantiles])
    if len(q) != len(y):
        raise ValueError(f"{len(q)} quantiles for {len(y)} labels.")
    if (y & (q < 0)).any():
        raise ValueError("Activating examples need a quantile (an int); only negatives may be None.")
    s = None if scores is None else np.array([NAN if v is None else v for v in scores], float)
    p = None if predictions is None else np.array([-1 if v is None else v for v in predictions])
    out = []
    for b in sorted(set(q[y].tolist())):
        in_bin = y & (q == b)
        a = r = NAN
        if s is not None:
            keep = (in_bin | ~y) & ~np.isnan(s)
            a = auroc(s[keep], y[keep])
        if p is not None:
            got = p[in_bin & (p >= 0)]
            r = float((got == 1).mean()) if len(got) else NAN
        out.append(QuantilePoint(quantile=int(b), n=int(in_bin.sum()), auroc=a, recall=r))
    return tuple(out)


def latent_metrics(latent: int, labels: Sequence[bool], *, scores: Sequence[float | None] | None = None,
                   predictions: Sequence[int | None] | None = None,
                   quantiles: Sequence[int | None] | None = None) -> LatentMetrics:
    """All metrics of one latent. Binary metrics need ``predictions``, AUROC needs ``scores``;
    None entries (failed examples) are left out and counted in ``n_failed``."""
    y = np.asarray(labels, dtype=bool)
    failed = np.zeros(len(y), bool)
    b = dict.fromkeys(("balanced_accuracy", "precision", "recall", "f1"), NAN)
    a = NAN
    if predictions is not None:
        ok = np.array([v is not None for v in predictions], bool)
        failed |= ~ok
        if ok.any():
            b = binary_metrics(np.array([int(v) for v in np.asarray(predictions, object)[ok]]), y[ok])
    if scores is not None:
        s = np.array([NAN if v is None else float(v) for v in scores])
        ok = ~np.isnan(s)
        failed |= ~ok
        a = auroc(s[ok], y[ok])
    curve = () if quantiles is None else quantile_curve(y, quantiles, scores, predictions)
    return LatentMetrics(latent=int(latent), n_pos=int(y.sum()), n_neg=int((~y).sum()),
                         n_failed=int(failed.sum()), auroc=a, by_quantile=curve, **b)


# -- over latents -------------------------------------------------------------------------------
def mean_ci(values: Iterable[float], *, n_boot: int = 2000, seed: int = 0,
            level: float = 0.95) -> MeanWithCI:
    """Mean over latents with a percentile bootstrap CI; NaN values are left out (and counted)."""
    v = np.asarray(list(values), dtype=np.float64)
    ok = v[~np.isnan(v)]
    n_nan = int(len(v) - len(ok))
    if len(ok) == 0:
        return MeanWithCI(NAN, NAN, NAN, 0, n_nan, n_boot, level)
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}: use at least 1 bootstrap resample (1000+ for a CI).")
    rng = np.random.default_rng(seed)
    boots = ok[rng.integers(0, len(ok), size=(n_boot, len(ok)))].mean(axis=1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return MeanWithCI(float(ok.mean()), float(lo), float(hi), len(ok), n_nan, n_boot, level)


def curve_over_latents(curves: Iterable[Sequence[QuantilePoint]], *, measure: str = "auroc",
                       n_boot: int = 2000, seed: int = 0) -> dict[int, MeanWithCI]:
    """Per quantile: mean over latents of ``measure`` ("auroc" or "recall") with a bootstrap CI."""
    if measure not in ("auroc", "recall"):
        raise ValueError(f"measure={measure!r}: use 'auroc' (scores) or 'recall' (predictions).")
    per: dict[int, list[float]] = {}
    for curve in curves:
        for pt in curve:
            per.setdefault(pt.quantile, []).append(getattr(pt, measure))
    return {q: mean_ci(v, n_boot=n_boot, seed=seed) for q, v in sorted(per.items())}


def paired_difference(real: Mapping[int, float], control: Mapping[int, float], *,
                      n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> PairedComparison:
    """Real vs control per latent (e.g. true vs shuffled explanations): latents present and
    non-NaN on both sides are paired; the CI resamples latents, keeping pairs together. When every
    shared latent is NaN on a side (e.g. every answer of a judge failed to parse) every field is
    NaN and n is 0; latent sets that do not overlap at all are an error."""
    common = set(real) & set(control)
    if not common:
        raise ValueError("Real and control share no latent: nothing to compare. Check that real "
                         "and control were scored on the same latents.")
    keys = sorted(k for k in common if not (math.isnan(real[k]) or math.isnan(control[k])))
    if not keys:
        empty = mean_ci([], n_boot=n_boot, seed=seed, level=level)
        return PairedComparison(real=empty, control=empty, diff=empty, frac_real_better=NAN)
    r = np.array([real[k] for k in keys], float)
    c = np.array([control[k] for k in keys], float)
    return PairedComparison(real=mean_ci(r, n_boot=n_boot, seed=seed, level=level),
                            control=mean_ci(c, n_boot=n_boot, seed=seed, level=level),
                            diff=mean_ci(r - c, n_boot=n_boot, seed=seed, level=level),
                            frac_real_better=float((r > c).mean()))


def unpaired_difference(a: Sequence[float], b: Sequence[float], *, n_boot: int = 2000, seed: int = 0,
                        level: float = 0.95) -> MeanWithCI:
    """Mean of a minus mean of b with a percentile-bootstrap CI, each side resampled on its own
    (for conditions whose latents are not the same units, e.g. a random SAE's). NaN values are
    left out; an empty side gives NaN with n 0. ``n`` is the smaller side's count."""
    a = np.asarray([v for v in a if not math.isnan(v)], float)
    b = np.asarray([v for v in b if not math.isnan(v)], float)
    if not len(a) or not len(b):
        return MeanWithCI(NAN, NAN, NAN, 0, 0, n_boot, level)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    boots = a[ia].mean(1) - b[ib].mean(1)
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return MeanWithCI(float(a.mean() - b.mean()), float(lo), float(hi), min(len(a), len(b)), 0, n_boot, level)
