"""autointerp: automated interpretability of language-model features, one notebook per stage.

Stages are submodules, imported on first use (``import autointerp as ai; ai.cache``):
config, models, corpus, saes, cache, llm, examples, explain, scorers, metrics, alignment, widgets.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
_STAGES = {"config", "paths", "models", "corpus", "saes", "cache", "llm", "llm_server", "examples",
           "planted", "scoring",
           "explain", "scorers", "metrics", "alignment", "widgets", "run"}


def __getattr__(name: str):
    if name in _STAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
