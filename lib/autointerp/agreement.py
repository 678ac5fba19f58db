"""How far the scorers agree: per-latent rank correlation between every pair of scorers that
scored the same latents with the same explanations in one run (METHODS §4).

The paper's claim is that the cheap scorers (embedding, surprisal, detection, fuzzing) track the
costly one (simulation), which is what makes a cheap feedback loop worth having. For each pair of
``scores/<name>.jsonl`` files: the latents both scored with an identical explanation string, each
scorer's own metric on them (real explanations only), Spearman's rho with a bootstrap CI that
resamples latents. A pair with fewer than ``metrics.MIN_LATENTS_FOR_CLAIM`` shared latents reads
"too few latents"; a scorer whose planted exam failed is named next to its correlations.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from . import metrics, results
from .findings import exam_passed, exam_verdict
from .rundir import RunDir

SCORERS = ("embedding", "surprisal", "detection", "fuzzing", "fuzzing_active", "simulation")
COSTLY = "simulation"


@dataclass(frozen=True)
class Agreement:
    """Per scorer: latent -> (explanation, value); per pair: Spearman rho with its CI."""

    values: dict[str, dict[int, tuple[str, float]]]
    pairs: dict[tuple[str, str], metrics.MeanWithCI]
    exams: dict[str, str]

    def matrix(self):
        """rho for every pair (NaN where too few latents), as a square DataFrame."""
        import pandas as pd

        names = list(self.values)
        m = pd.DataFrame(np.eye(len(names)), index=names, columns=names)
        for (a, b), r in self.pairs.items():
            m.loc[a, b] = m.loc[b, a] = r.mean
        return m


def spearman_ci(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, seed: int = 0,
                level: float = 0.95) -> metrics.MeanWithCI:
    """Spearman's rho of paired values with a percentile-bootstrap CI over the pairs (resamples
    where either side is constant are left out); NaN values are dropped first."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = ~(np.isnan(x) | np.isnan(y))
    x, y = x[ok], y[ok]
    nan = metrics.MeanWithCI(math.nan, math.nan, math.nan, int(ok.sum()), int((~ok).sum()), n_boot, level)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return nan
    rho = float(spearmanr(x, y).statistic)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        if np.ptp(x[i]) > 0 and np.ptp(y[i]) > 0:
            boots.append(spearmanr(x[i], y[i]).statistic)
    if not boots:
        return nan
    lo, hi = np.quantile(boots, [(1 - level) / 2, (1 + level) / 2])
    return metrics.MeanWithCI(rho, float(lo), float(hi), len(x), int((~ok).sum()), n_boot, level)


def _values(path: Path) -> dict[int, tuple[str, float]]:
    header, recs = results.read(path, "scores")
    metric = header.get("metric", "auroc")
    def value(m: dict) -> float:
        v = m.get(metric)
        return math.nan if v is None else float(v)  # NaN is written as null

    return {int(r["latent"]): (r["explanation"], value(r["metrics"]))
            for r in recs if r.get("control") is None and "latent" in r and isinstance(r.get("metrics"), dict)}


def measure(run_dir: str | Path | RunDir, names: Sequence[str] = SCORERS, *, seed: int = 0) -> Agreement:
    """Every pair of ``names`` whose score files exist in the run (see module docstring)."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    vals = {n: _values(rd.scores(n)) for n in names if rd.scores(n).exists()}
    pairs = {}
    keys = list(vals)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            common = sorted(j for j in vals[a] if j in vals[b] and vals[a][j][0] == vals[b][j][0])
            pairs[(a, b)] = spearman_ci([vals[a][j][1] for j in common], [vals[b][j][1] for j in common], seed=seed)
    exams = {n: exam_verdict(rd, n.split("_")[0]) for n in vals}
    return Agreement(vals, pairs, exams)


def text(ag: Agreement) -> str:
    """What this run says about the claim, from its numbers: the cheap scorers against simulation,
    then the strongest and weakest pair, then which scorers passed their exam."""
    lines = []
    n_costly = sum(math.isfinite(v) for _, v in ag.values.get(COSTLY, {}).values())
    vs = {a if b == COSTLY else b: r for (a, b), r in ag.pairs.items() if COSTLY in (a, b)}
    if COSTLY not in ag.values or n_costly < metrics.MIN_LATENTS_FOR_CLAIM:
        lines.append(f"Whether the cheap scorers track {COSTLY} cannot be tested on this run: {COSTLY} has a score "
                     f"for {n_costly} latent(s) (a claim needs {metrics.MIN_LATENTS_FOR_CLAIM}).")
    else:
        for name, r in vs.items():
            v = metrics.verdict(r)
            lines.append(f"{name} vs {COSTLY}: rho {r.mean:+.2f} [95% CI {r.low:+.2f}, {r.high:+.2f}] over {r.n} "
                         f"latents: {'tracks it' if v == metrics.ABOVE else metrics.READING[v]}.")
    measured = {p: r for p, r in ag.pairs.items() if metrics.verdict(r) != metrics.TOO_FEW}
    if measured:
        best = max(measured, key=lambda p: measured[p].mean)
        lines.append(f"Most alike: {best[0]} and {best[1]} (rho {measured[best].mean:+.2f}, {measured[best].n} latents); "
                     f"{len(measured)} of {len(ag.pairs)} pairs share enough latents for a CI that means anything.")
    else:
        lines.append(f"No pair of scorers shares {metrics.MIN_LATENTS_FOR_CLAIM}+ latents with the same explanation here.")
    passed = [n for n, e in ag.exams.items() if exam_passed(e)]
    lines.append(f"Passed their planted exam on this run: {', '.join(passed) or 'none'}; a correlation with a scorer "
                 "that did not is agreement with noise.")
    return "\n".join(lines)


def figure(ag: Agreement):
    """Heatmap of Spearman's rho between scorers, each cell annotated with rho and the latents it rests on."""
    import plotly.graph_objects as go

    m = ag.matrix()
    n = {(a, b): r.n for (a, b), r in ag.pairs.items()}
    labels = [[("1" if a == b else f"{m.loc[a, b]:+.2f}<br>n={n.get((a, b), n.get((b, a), 0))}")
               for b in m.columns] for a in m.index]
    fig = go.Figure(go.Heatmap(z=m.values, x=list(m.columns), y=list(m.index), zmin=-1, zmax=1, colorscale="RdBu",
                               text=labels, texttemplate="%{text}", colorbar=dict(title="rho")))
    fig.update_layout(title="Scorer agreement: Spearman's rho over shared latents (same explanation)",
                      template="plotly_white", height=420)
    return fig


__all__ = ["SCORERS", "COSTLY", "Agreement", "spearman_ci", "measure", "text", "figure"]
