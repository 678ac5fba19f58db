"""The explanations file and what a chapter reads from it: ``save`` / ``load_records`` /
``load`` (``explanations.jsonl``, schema ``autointerp.explanations``), tables per latent and per
explainer, the failures by cause, and a verdict whose advice follows the cause.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import results
from .explain import FAILURES, LogitLensExplainer
from .llm import Endpoint, safe_url
from .records import Explanation, explanations_from
from .rundir import RunDir


def describe(explainer: Any) -> dict[str, Any]:
    """Name, type, prompt hash and settings of an explainer (no weights)."""
    settings = ({"k": explainer.k, "final_norm": explainer.norm_scale is not None}  # it holds the unembedding
                if isinstance(explainer, LogitLensExplainer) else dataclasses.asdict(explainer))
    return {"name": explainer.name, "type": type(explainer).__name__,
            "prompt_hash": explainer.prompt_hash, "settings": settings}


def save(run_dir: str | os.PathLike, explanations: Sequence[Explanation], *,
         explainers: Sequence[Any], endpoint: Endpoint | None = None,
         skipped: dict[int, str] | None = None, **header: Any) -> Path:
    """``<run_dir>/explanations.jsonl`` (schema ``autointerp.explanations``): a header
    (explainers with their settings and prompt hashes, endpoint, skipped latents, provenance),
    then one line per latent."""
    by: dict[int, list[Explanation]] = {}
    for e in explanations:
        by.setdefault(e.latent, []).append(e)
    described = [describe(e) for e in explainers]
    return results.write(
        RunDir(Path(run_dir)).explanations, "explanations",
        ({"latent": j, "explanations": by[j]} for j in sorted(by)),
        settings={d["name"]: d["settings"] for d in described},
        prompt_hash=results.digest([d["prompt_hash"] for d in described]),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        explainers=described,
        llm=None if endpoint is None else {"base_url": safe_url(endpoint.base_url), "model": endpoint.model},
        skipped={str(k): v for k, v in (skipped or {}).items()}, **header)


def load_records(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[Explanation]]:
    """(header, explanations) from ``<run_dir>/explanations.jsonl``."""
    header, rows = results.read(RunDir(Path(run_dir)).require("explanations"), "explanations")
    return header, explanations_from(rows)


def to_frame(explanations: Sequence[Explanation]):
    """One row per explanation as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in explanations])


def load(run_dir: str | os.PathLike):
    """One row per explanation (latent, explainer, sample, text, failed, ...) as a DataFrame."""
    return to_frame(load_records(run_dir)[1])


def side_by_side(explanations: Sequence[Explanation]):
    """Latents x explainers: the first sample's text, or "FAILED: reason"."""
    df = to_frame([x for x in explanations if x.sample == 0])
    df["shown"] = [f"FAILED: {e}" if f else t for t, f, e in zip(df.text, df.failed, df.error)]
    return df.pivot(index="latent", columns="explainer", values="shown")[
        list(dict.fromkeys(df.explainer))]


def summary(explanations: Sequence[Explanation]):
    """Per explainer: explanations, failures, failure rate, distinct texts, mean words, cache hits."""
    df = to_frame(explanations)
    ok = df[~df.failed]
    g = df.groupby("explainer", sort=False)
    out = g.agg(explanations=("latent", "size"), failed=("failed", "sum"), cached=("cached", "sum"))
    out["failure_rate"] = out.failed / out.explanations
    out["distinct_texts"] = ok.groupby("explainer").text.nunique().reindex(out.index).fillna(0).astype(int)
    out["mean_words"] = ok.text.str.split().str.len().groupby(ok.explainer).mean().reindex(out.index)
    return out


def failures(explanations: Sequence[Explanation]) -> dict[str, int]:
    """How many answers failed, by kind (``explain.FAILURES``), most frequent first."""
    kinds = Counter(x.details.get("failure", "other") for x in explanations if x.failed)
    return dict(kinds.most_common())


def failed_reply(explanations: Sequence[Explanation]) -> Explanation | None:
    """One failed answer of the most frequent kind (the chapter shows its raw reply)."""
    kinds = failures(explanations)
    top = next(iter(kinds), None)
    return next((x for x in explanations if x.failed and x.details.get("failure", "other") == top), None)


def verdict(endpoint: Endpoint, llm_summary, explanations: Sequence[Explanation] = ()) -> str:
    """Honest sentences about the LLM explanations of this run, from its own numbers: how many
    failed, why, and the advice that follows from each cause."""
    n = int(llm_summary.explanations.sum())
    rate = float(llm_summary.failed.sum()) / max(n, 1)
    distinct = int(llm_summary.distinct_texts.sum())
    head = (f"These explanations come from the embedded {endpoint.model} (local): it proves the "
            "mechanics, but it is a weak explainer" if endpoint.embedded else
            f"These explanations come from {endpoint.model} at {safe_url(endpoint.base_url)}")
    lines = [f"{head}. {rate:.0%} of its {n} answers failed; the rest hold {distinct} distinct texts."]
    llm = [x for x in explanations if x.explainer in set(llm_summary.index)]
    for kind, count in failures(llm).items():
        lines.append(f"- {count} failed because {FAILURES.get(kind, 'of ' + kind)}.")
    return "\n".join(lines)


__all__ = ["describe", "save", "load_records", "to_frame", "load", "side_by_side", "summary",
           "failures", "failed_reply", "verdict"]
