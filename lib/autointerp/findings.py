"""The paper's claims from one run's results, ``findings.json``, and the regression check (chapter 11).

``collect`` reads what chapters 00-09 wrote and returns one row per claim and scorer: effect, 95%
CI, latents, the scorer's planted exam, and "holds / does not hold / inconclusive". ``key_metrics``
picks the numbers a regression run watches. ``check`` compares them with a baseline committed in
the repository (``data/baselines/<profile>.json``: each number with its tolerance and why), and
names every number that moved beyond its tolerance.

    python -m autointerp.findings RUN_DIR                 # check against data/baselines/<profile>.json
    python -m autointerp.findings RUN_DIR --refresh       # write that baseline from this run, on purpose
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import metrics, results
from .rundir import RunDir

SCHEMA = "autointerp.findings/1"
# The tolerance of each watched number when a baseline is refreshed (absolute, in its own units),
# and why: runs differ across machines in float rounding (SAE training, llama.cpp), not in kind.
TOLERANCE = {"sae.fvu": (0.05, "SAE training on another CPU rounds differently"),
             "sae.frac_alive": (0.1, "alive latents on 32 held-out rows move with training"),
             "cache.frac_alive": (0.1, "follows the SAE"),
             "embedding.real_auroc": (0.1, "mean over few latents"),
             "embedding.exam_diff": (0.15, "planted exam: few planted latents"),
             "surprisal.exam_diff": (0.15, "planted exam: few planted latents"),
             "alignment.resid_minus_mlp": (0.1, "mean matched cosine, gap 1"),
             "alignment.random_floor": (0.03, "random unit vectors: nearly fixed by the size"),
             "effect": (0.2, "a claim's effect over a handful of latents")}


@dataclass(frozen=True)
class Drift:
    """One watched number that moved beyond its tolerance (or vanished)."""

    name: str
    baseline: float | None
    now: float | None
    tolerance: float

    def __str__(self) -> str:
        if self.now is None:
            return f"{self.name}: in the baseline ({self.baseline}) but not in this run"
        if self.baseline is None:
            return f"{self.name}: new in this run ({self.now:.4f}), not in the baseline"
        return (f"{self.name}: {self.baseline:.4f} -> {self.now:.4f} (moved {self.now - self.baseline:+.4f}, "
                f"tolerance +-{self.tolerance})")


LLM_SCORERS = ("detection", "fuzzing", "simulation")  # scorers whose numbers come from an LLM's answers


def _row(claim: str, chapter: str, scorer: str, d: Mapping[str, Any] | metrics.MeanWithCI | None,
         exam: str = "-", note: str = "") -> dict[str, Any]:
    if d is None:
        return {"claim": claim, "chapter": chapter, "scorer": scorer, "effect": math.nan, "low": math.nan,
                "high": math.nan, "n": 0, "planted_exam": exam, "exam_passed": False, "verdict": metrics.TOO_FEW,
                "reading": f"not measured: {note}" if note else "not measured"}
    d = d if isinstance(d, metrics.MeanWithCI) else metrics.MeanWithCI(
        **{k: (math.nan if d.get(k) is None else d[k]) for k in ("mean", "low", "high")},
        n=int(d.get("n", 0)), n_nan=int(d.get("n_nan", 0)), n_boot=int(d.get("n_boot", 0)))
    v = metrics.verdict(d)
    return {"claim": claim, "chapter": chapter, "scorer": scorer, "effect": d.mean, "low": d.low, "high": d.high,
            "n": d.n, "planted_exam": exam, "exam_passed": exam_passed(exam), "verdict": v,
            "reading": metrics.READING[v] + (f" ({note})" if note else "")}


def exam_passed(exam: str) -> bool:
    """Whether the measuring scorer passed its own exam (planted latents, known answer, or none needed)."""
    return str(exam).startswith(("separates", "known answer: above", "none needed"))


def _read(rd: RunDir, name: str):
    path = rd.scores(name)
    return results.read(path, "scores") if path.exists() else (None, [])


def collect(run_dir: str | Path | RunDir) -> list[dict[str, Any]]:
    """One row per claim (and scorer) from this run's results; a claim whose chapter did not run
    reads "not measured"."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out: list[dict[str, Any]] = []
    header, rows = _read(rd, "baselines")
    for r in rows:
        d = None if r["scorer"] == "-" else {"mean": r["effect"], "low": r["low"], "high": r["high"],
                                              "n": min(r["n_a"], r["n_b"])}
        out.append(_row(r["claim"], "08", r["scorer"], d, r["planted_exam"],
                        "" if d else r["reading"].removeprefix("not measured: ")))
    if header is None:
        out.append(_row("SAE latents are more interpretable than neurons (and the other baselines)", "08", "-",
                        None, note="run notebooks/08_neurons.ipynb"))
    header, recs = _read(rd, "alignment")
    floor = next((r["mean_similarity"] for r in recs if r["kind"] == "random_floor"), math.nan)
    out.append(_row("adjacent residual SAEs are more alike than adjacent MLP SAEs", "09", "matched cosine",
                    header["resid_minus_mlp_gap1"] if header else None,
                    f"none needed (no judge; random floor {floor:.3f})" if header else "-",
                    note="" if header else "run notebooks/09_alignment.ipynb"))
    from .selection import CLAIM as SELECTION_CLAIM

    header, _ = _read(rd, "selection")
    out.append(_row(SELECTION_CLAIM, "10", header["scorer"] if header else "-",
                    header["kept_minus_random"] if header else None,
                    exam_verdict(rd, header["scorer"]) if header else "-",
                    "" if header else "run notebooks/10_selection.ipynb"))
    header, _ = _read(rd, "intervention")
    d = header["summary"]["trained_minus"].get("random_sae") if header else None
    out.append(_row("intervention scoring tells a trained SAE from a random one", "07", "intervention", d,
                    exam_verdict(rd, "intervention"), "" if header else "run notebooks/07_intervention.ipynb"))
    return out


def exam_verdict(rd: RunDir, scorer: str) -> str:
    """A scorer's own exam on this run: the planted-latent exam's verdict (chapters 03-06,
    ``scores/<scorer>_validity.jsonl``), for intervention the known-answer case of chapter 07;
    "not taken" when that chapter has not run."""
    if scorer == "intervention":
        header, _ = _read(rd, "intervention")
        if not header or "known_answer" not in header:
            return "not taken"
        return f"known answer: {header['known_answer']['verdict']}"
    path = rd.validity(scorer)
    if not path.exists():
        return "not taken"
    return str(results.read(path, "validity")[0].get("verdict", "unknown"))


def key_metrics(run_dir: str | Path | RunDir) -> dict[str, float]:
    """The numbers a regression run watches, by name."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    out: dict[str, float] = {}
    rep = rd.sae_dir / "train_report.json"
    if rep.exists():
        r = json.loads(rep.read_text())
        out["sae.fvu"], out["sae.frac_alive"] = r["fvu"], r["frac_alive"]
    if rd.cache_summary.exists():
        out["cache.frac_alive"] = json.loads(rd.cache_summary.read_text())["stats"]["frac_alive"]
    header, _ = _read(rd, "embedding")
    if header:
        out["embedding.real_auroc"] = header["comparison"]["real"]["mean"]
    for name in ("embedding", "surprisal"):
        path = rd.validity(name)
        if path.exists():
            out[f"{name}.exam_diff"] = results.read(path, "validity")[0]["diff"]
    header, recs = _read(rd, "alignment")
    if header:
        out["alignment.resid_minus_mlp"] = header["resid_minus_mlp_gap1"]["mean"]
        out["alignment.random_floor"] = next(r["mean_similarity"] for r in recs if r["kind"] == "random_floor")
    from .selection import CLAIM as SELECTION_CLAIM

    for r in collect(rd):
        # Not watched: numbers made of the embedded LLM's text (its judges' answers, the sampled
        # candidates of chapter 10), which another CPU's llama.cpp may word differently.
        if r["scorer"] in LLM_SCORERS or r["claim"] == SELECTION_CLAIM:
            continue
        if math.isfinite(r["effect"]):
            out[f"effect: {r['claim']} ({r['scorer']})"] = r["effect"]
    return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def write(run_dir: str | Path | RunDir, rows: Sequence[Mapping[str, Any]], **header: Any) -> Path:
    """``<run_dir>/findings.json``: schema, provenance, the claims and the key metrics."""
    rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    path = rd.path("findings")
    results.write_json(path, {"schema": SCHEMA, **header, "provenance": results.provenance(),
                              "findings": [results.plain(r) for r in rows], "key_metrics": key_metrics(rd)})
    return path


def tolerance(name: str) -> tuple[float, str]:
    """A watched number's tolerance and why (a claim's effect, or anything unlisted: the "effect" one)."""
    return TOLERANCE.get(name, TOLERANCE["effect"])


def baseline_path(profile: str) -> Path:
    from .paths import repo_root

    return repo_root() / "data" / "baselines" / f"{profile}.json"


def refresh(run_dir: str | Path | RunDir, path: str | Path) -> Path:
    """Write the baseline from this run: every key metric with its tolerance and why. A claim's
    effect gets at least half its own CI width as tolerance (a number known to +-0.5 cannot be
    held to +-0.2)."""
    now = key_metrics(run_dir)
    half = {f"effect: {r['claim']} ({r['scorer']})": (r["high"] - r["low"]) / 2 for r in collect(run_dir)
            if math.isfinite(r["effect"])}
    def tol(k: str) -> tuple[float, str]:
        t, why = tolerance(k)
        return (round(max(t, half[k]), 3), why + "; at least half its 95% CI") if k in half else (t, why)
    doc = {"schema": "autointerp.baseline/1", "how_to_refresh": REFRESH,
           "metrics": {k: {"value": round(v, 4), "tolerance": tol(k)[0], "why": tol(k)[1]}
                       for k, v in sorted(now.items())}}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(doc, indent=1) + "\n")
    return Path(path)


REFRESH = ("python -m autointerp.findings RUN_DIR --refresh  (after a change that moves these numbers on "
           "purpose; say why in the commit)")


def check(run_dir: str | Path | RunDir, path: str | Path) -> list[Drift]:
    """Every watched number of the baseline at ``path`` that moved beyond its tolerance in this
    run, or is missing from it. (Numbers new in this run are not drift: ``new_metrics`` lists them.)"""
    base = json.loads(Path(path).read_text())["metrics"]
    now = key_metrics(run_dir)
    return [Drift(k, b["value"], now.get(k), b["tolerance"]) for k, b in base.items()
            if k not in now or abs(now[k] - b["value"]) > b["tolerance"]]


def new_metrics(run_dir: str | Path | RunDir, path: str | Path) -> list[str]:
    """Watched numbers of this run that the baseline does not hold yet (refresh to add them)."""
    base = json.loads(Path(path).read_text())["metrics"]
    return sorted(set(key_metrics(run_dir)) - set(base))


def check_text(drifts: Sequence[Drift], path: str | Path) -> str:
    if not drifts:
        return f"Every watched number is within its tolerance of {path}."
    return (f"{len(drifts)} number(s) moved beyond the tolerance of {path}:\n" + "\n".join(f"  {d}" for d in drifts)
            + f"\nIf the change is intended, refresh the baseline: {REFRESH}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--baseline", type=Path, default=None, help="default: data/baselines/<profile>.json")
    ap.add_argument("--refresh", action="store_true", help="write the baseline from this run")
    args = ap.parse_args(argv)
    from .config import load

    profile = load(args.run_dir).profile
    path = args.baseline or baseline_path(profile)
    if args.refresh:
        print(f"Baseline written to {refresh(args.run_dir, path)}")
        return 0
    drifts = check(args.run_dir, path)
    print(check_text(drifts, path))
    return 1 if drifts else 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["SCHEMA", "TOLERANCE", "Drift", "collect", "key_metrics", "write", "tolerance",
           "baseline_path", "refresh", "check", "new_metrics", "check_text", "exam_passed", "exam_verdict", "main"]
