"""Glue for the LLM-judge chapters (03 detection + intruder, 04 fuzzing + simulation): the judge
endpoint, its settings, cost, honest notes, and the intruder test's figure, summary and results file.

A chapter opens one ``Judge`` through ``llm.connect``: the endpoint named in its parameters, else
the environment's (``AUTOINTERP_LLM_BASE_URL`` ...), else the embedded SmolLM2 behind a local
llama.cpp server on 127.0.0.1 that lives until ``Judge.close()`` (or the kernel's exit).
Responses are cached in ``<run_dir>/llm_cache`` and counted in the client's ledger.

``judge_settings`` picks how a judge is asked, from what its endpoint can do. The reference shows
5 examples per prompt and reads a list of 0/1 answers; an endpoint that cannot answer with a list
(``Endpoint.lists`` is False: the embedded 135M model, 0 of 40 lists parsed, measured) gets ONE
example per prompt, read as P("1") from the first token's logprobs. Both are the same scorer class
with other settings, recorded in every result.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .llm import Endpoint, LLMClient, connect, safe_url
from . import metrics
from .metrics import MIN_LATENTS_FOR_CLAIM
from .records import ScorerResult
from .rundir import RunDir
from .scorers import METRIC_LABELS


@dataclass
class Judge:
    """An open judge endpoint with its client (cache + ledger); ``server`` is the local llama.cpp
    server this judge started, if any."""

    endpoint: Endpoint
    client: LLMClient
    server: Any = field(default=None, repr=False)

    @property
    def is_embedded(self) -> bool:
        """True when the judge is the embedded 135M model (a mechanics check, not a judge)."""
        return self.endpoint.embedded

    def close(self) -> None:
        """Stop the local server this judge started (a no-op for remote endpoints)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def describe(self) -> str:
        where = "embedded, local llama.cpp server" if self.server is not None else safe_url(self.endpoint.base_url)
        return f"{self.endpoint.model} ({where})"


def open_judge(run_dir: str | Path, base_url: str | None = None, model: str | None = None,
               api_key_env: str = "OPENAI_API_KEY", *, concurrency: int = 2,
               n_threads: int | None = None) -> Judge:
    """The chapter's endpoint (``llm.connect``: explicit, else the environment's, else the
    embedded local server, started now), with a client caching under ``<run_dir>/llm_cache``."""
    ep, server = connect(base_url, model, api_key_env, n_threads=n_threads)
    client = LLMClient(ep, RunDir(Path(run_dir)).llm_cache, concurrency=concurrency)
    return Judge(ep, client, server)


def judge_settings(judge: Judge, n_per_prompt: int | None = None,
                   logprobs: bool | None = None) -> dict[str, Any]:
    """How to ask this judge: ``n_per_prompt`` examples per prompt (None: 1 when the endpoint
    cannot answer with a list, ``Endpoint.lists``; else the reference's 5) and ``logprobs``
    (None: True; an endpoint that serves none is detected and recorded, and AUROC is then NaN)."""
    n = n_per_prompt if n_per_prompt is not None else (5 if judge.endpoint.lists else 1)
    return {"n_per_prompt": int(n), "logprobs": True if logprobs is None else bool(logprobs)}


def failure_summary(results: Sequence[ScorerResult], n_show: int = 3) -> str:
    """How many prompts failed to parse, and a few of the reasons, in one paragraph."""
    n = sum(r.usage.get("n_prompts", 0) for r in results)
    bad = sum(r.usage.get("failed_prompts", 0) for r in results)
    reasons = list(dict.fromkeys(f["reason"] for r in results for f in r.usage.get("failures", ())))
    text = f"{bad} of {n} prompts ({bad / max(n, 1):.0%}) got an answer that could not be parsed"
    return text + (f"; for example: {'; '.join(reasons[:n_show])}." if reasons else ".")


def judge_behaviour(results: Sequence[ScorerResult]) -> dict[str, Any]:
    """How the judge answered, over the given results: parsed 0/1 answers and how many were 1,
    every served P("1"), and the latents whose P("1") was the same for every excerpt (all tied:
    their AUROC is 0.5 by construction)."""
    preds = [e.prediction for r in results for e in r.examples if e.prediction is not None]
    probs = [float(e.score) for r in results for e in r.examples if e.score is not None]
    tied = []
    for r in results:
        s = [e.score for e in r.examples if e.score is not None]
        if len(s) >= 2 and len(set(s)) == 1:
            tied.append(r.latent)
    return {"n_answers": len(preds), "n_one": int(sum(preds)),
            "share_one": sum(preds) / len(preds) if preds else float("nan"),
            "p_one": probs, "n_results": len(results), "tied": tied}


def behaviour_note(b: Mapping[str, Any]) -> str:
    """What the judge's answers say about the judge (a yes-sayer, a no-sayer, ties), from ``b``."""
    if not b["n_answers"]:
        return "The judge gave no answer that could be parsed: nothing to read from it."
    share = b["share_one"]
    text = f"The judge answered 1 on {b['n_one']} of {b['n_answers']} parsed answers ({share:.0%})"
    if share >= 0.9:
        text += (": it says yes to almost everything. Recall near 1 with precision near 0.5 is what a "
                 "yes-sayer scores on a balanced test set, not a measurement of the explanations.")
    elif share <= 0.1:
        text += ": it says no to almost everything, so recall and F1 measure the judge, not the explanations."
    else:
        text += "."
    if b["p_one"]:
        text += (f" P(\"1\") ranged {min(b['p_one']):.2f}-{max(b['p_one']):.2f} over {len(b['p_one'])} excerpts.")
    if b["tied"]:
        text += (f" {len(b['tied'])} of {b['n_results']} latent-conditions got the same P(\"1\") for every "
                 f"excerpt (latents {sorted(set(b['tied']))}): their AUROC of 0.5 means no signal, not a measurement.")
    return text


def behaviour_figure(b: Mapping[str, Any], title: str = ""):
    """Histogram of the judge's P("1") over every scored excerpt."""
    import plotly.graph_objects as go

    fig = go.Figure(go.Histogram(x=b["p_one"], xbins=dict(start=0, end=1, size=0.05), marker_color="#3b75af"))
    fig.update_layout(title=title or 'The judge\'s P("1") over every excerpt (real and shuffled)',
                      xaxis_title='P("1")', yaxis_title="excerpts", xaxis_range=[0, 1], height=300,
                      template="plotly_white")
    return fig


def per_latent_cost(results: Sequence[ScorerResult]) -> dict[str, float]:
    """Prompts and tokens per latent, averaged over the given results."""
    n = max(len(results), 1)
    return {"prompts_per_latent": sum(r.usage.get("n_prompts", 0) for r in results) / n,
            "prompt_tokens_per_latent": sum(r.usage.get("prompt_tokens", 0) for r in results) / n,
            "completion_tokens_per_latent": sum(r.usage.get("completion_tokens", 0) for r in results) / n}


def honesty_note(judge: Judge, validity: Mapping[str, Any] | None) -> str:
    """What this chapter's numbers may be taken for, from the planted control's own numbers."""
    if validity is None:
        return "No validity control was run: treat the scores above as unvalidated."
    metric = METRIC_LABELS.get(validity.get("metric", "auroc"), validity.get("metric", ""))
    from .planted import SEPARATES, TOO_FEW

    lo, hi = validity["diff_ci"]
    if validity.get("verdict") == TOO_FEW:
        return (f"The planted control scored only {validity.get('n_latents')} latents: too few to judge "
                f"the judge {judge.describe()}; raise planted_latents. Treat every score above as unvalidated.")
    if validity.get("verdict") == SEPARATES:
        return (f"The judge {judge.describe()} separates true from shuffled explanations of planted "
                f"latents ({metric} difference CI [{lo:+.3f}, {hi:+.3f}]): its scores of real "
                "latents are measurements, within their CIs.")
    weak = (" The embedded 135M model proves the mechanics only (measured on latents of known meaning, "
            "one excerpt per prompt: mean AUROC 0.51 with true explanations, 0.52 with shuffled ones)." if judge.is_embedded else "")
    return (f"The judge {judge.describe()} does NOT separate true from shuffled explanations even on "
            f"planted latents whose meaning is known ({metric} difference CI [{lo:+.3f}, {hi:+.3f}] "
            f"includes 0): no score in this chapter is a finding about the explanations.{weak} Point "
            "the chapter at a stronger model (llm_base_url / llm_model, or AUTOINTERP_LLM_BASE_URL "
            "and AUTOINTERP_LLM_MODEL) and rerun.")


def intruder_figure(runs: Mapping[str, Any], title: str = ""):
    """Per intruder scorer: accuracy of real trials vs the mixed control, mean over latents, with
    the chance level. ``runs``: scorer name -> ``scorers.ScoreRun`` (``run_with_control``)."""
    import plotly.graph_objects as go

    from .metrics import mean_ci

    fig = go.Figure()
    for cond, side, color in (("real trials", "real", "#3b75af"), ("mixed control", "control", "#bbbbbb")):
        cis = [mean_ci([r.metrics.accuracy for r in getattr(run, side)]) for run in runs.values()]
        fig.add_bar(x=list(runs), y=[c.mean for c in cis], name=cond, marker_color=color,
                    error_y=dict(type="data", array=[c.high - c.mean for c in cis],
                                 arrayminus=[c.mean - c.low for c in cis]))
    chance = next((r.details["chance"] for run in runs.values() for r in run.real), None)
    if chance is not None:
        fig.add_hline(y=chance, line_dash="dash", annotation_text=f"chance {chance:.2f}")
    fig.update_layout(barmode="group", title=title or "Intruder accuracy (mean over latents, 95% CI)",
                      yaxis_range=[0, 1], yaxis_title="accuracy", height=360, template="plotly_white")
    return fig


def intruder_summary(name: str, run: Any, *, seed: int = 0) -> str:
    """One sentence per intruder scorer from this run's numbers; ``run``: a ``scorers.ScoreRun``
    (real and mixed-control results), compared on accuracy with the bootstrap ``seed``."""
    from .scorers import compare

    real, control = run.real, run.control
    c = compare(real, control, "accuracy", seed=seed)
    chance = real[0].details["chance"] if real else float("nan")
    failed = sum(r.metrics.n_failed for r in [*real, *control])
    total = sum(r.details["n_trials"] for r in [*real, *control])
    head = (f"{name}: accuracy {c.real.mean:.2f} on real trials vs {c.control.mean:.2f} on the mixed "
            f"control (chance {chance:.2f}); difference {c.diff.mean:+.2f} [95% CI {c.diff.low:+.2f}, "
            f"{c.diff.high:+.2f}] over {c.diff.n} latents; {failed} of {total} trials unparseable.")
    return head + {
        metrics.TOO_FEW: f" Too few latents for a claim (needs {MIN_LATENTS_FOR_CLAIM}).",
        metrics.ABOVE: " The latents' activating excerpts share something this judge can see.",
        metrics.BELOW: (" Below the mixed control: the judge does worse on a latent's own excerpts "
                        "than on unrelated ones; investigate."),
        metrics.NOT_DISTINGUISHABLE: " Not distinguishable from the control: NOT a finding.",
    }[metrics.verdict(c.diff)]


def write_intruder(run_dir: str | Path, name: str, run: Any, *, scorer: Any = None, seed: int = 0,
                   **header: Any) -> Path:
    """``<run_dir>/scores/<name>.jsonl`` via ``scorers.write_run``: header (scorer, metric
    "accuracy", comparison with the bootstrap ``seed``, seed, the scorer's settings and prompt
    hash, ``header``), then one record per latent and condition, real then control."""
    import dataclasses

    from .rundir import RunDir
    from .scorers import compare, write_run

    run = dataclasses.replace(run, metric="accuracy",
                              comparison=compare(run.real, run.control, "accuracy", seed=seed))
    return write_run(RunDir(run_dir).scores(name), run, scorer=scorer, name=name, seed=seed, **header)


__all__ = ["Judge", "open_judge", "judge_settings", "failure_summary", "judge_behaviour", "behaviour_note",
           "behaviour_figure", "per_latent_cost",
           "honesty_note", "intruder_figure", "intruder_summary", "write_intruder"]
