"""autointerp: automated interpretability of language-model features, one notebook per stage.

Modules are imported on first use (``import autointerp as ai; ai.cache``). The pipeline's
stages: models, corpus, saes (+ sae_formats: sparsify and Gemma Scope folders), cache, examples (+ neighbours), explain (+ explanations), scorers, planted,
baselines (neurons and random controls through the same stages), alignment (latents matched across SAEs), layers (the SAE family chapter 09 matches),
completion (the completion-mode explainer), selection (best-of-k and refinement by a cheap scorer), agreement
(how far the scorers agree), findings (the claims table and its regression check),
lab (a latent's facts from a run) with labview (the dashboard), report (one HTML file per run) and
export (a Neuronpedia-style feature export).
The shape they share:
config (the settings table), rundir (the run-directory layout), records (what flows between
stages), results (the one JSONL format), metrics, llm (endpoints, client, embedded server).
Chapter glue: chapter (a chapter's preamble), scoring, judging, steering, widgets, run.
Scale: distributed (sharded caching on torchrun), remote (the model's traces on NDIF), synthetic (random Gemma-2 and Gemma Scope SAEs in
their real formats, for offline tests and benchmarks).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_STAGES = {"config", "rundir", "records", "results", "paths", "models", "corpus", "saes", "cache",
           "examples", "neighbours", "explain", "explanations", "scorers", "planted", "metrics", "llm", "chapter", "scoring",
           "judging", "steering", "widgets", "run", "baselines", "alignment", "layers", "findings",
           "completion", "selection", "agreement", "lab", "labview", "report", "export", "verify", "progress", "distributed",
           "plain_explainers", "sae_formats", "synthetic", "remote"}


def dashboard(run_dir, latent: int | None = None, **kwargs):
    """The feature dashboard over a run directory (``labview.Dashboard``; chapter 12)."""
    from .labview import dashboard as make

    return make(run_dir, latent, **kwargs)


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
