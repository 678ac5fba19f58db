"""Glue for the LLM-judge chapters (03 detection + intruder, 04 fuzzing + simulation).

A chapter opens one ``Judge``: the endpoint named in its parameters, else the environment's
(``AUTOINTERP_LLM_BASE_URL`` ...), else the embedded SmolLM2 behind a local llama.cpp server on
127.0.0.1 that lives until ``Judge.close()`` (or the kernel's exit). Responses are cached in
``<run_dir>/llm_cache`` and counted in the client's ledger.

``judge_settings`` picks how a judge is asked. The reference shows 5 examples per prompt and reads
a list of 0/1 answers; the embedded 135M model cannot write such a list (0 of 40 parsed, measured),
so on it each prompt holds ONE example and the answer is read as P("1") from the first token's
logprobs. Both are the same scorer class with other settings, recorded in every result.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .llm import Endpoint, LLMClient
from .scorers import METRIC_LABELS, ScorerResult

EMBEDDED_ALIAS = "smollm2-135m-instruct"


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
        return self.endpoint.is_local and "135m" in self.endpoint.model.lower()

    def close(self) -> None:
        """Stop the local server this judge started (a no-op for remote endpoints)."""
        if self.server is not None:
            self.server.stop()
            self.server = None

    def describe(self) -> str:
        from .explain import safe_url

        where = "embedded, local llama.cpp server" if self.server is not None else safe_url(self.endpoint.base_url)
        return f"{self.endpoint.model} ({where})"


def open_judge(run_dir: str | Path, base_url: str | None = None, model: str | None = None,
               api_key_env: str = "OPENAI_API_KEY", *, concurrency: int = 2,
               n_threads: int | None = None) -> Judge:
    """An explicit endpoint (``base_url`` + ``model``), else the environment's, else the embedded
    local server, started now. Responses are cached under ``<run_dir>/llm_cache``."""
    from .llm import endpoint_from_env
    from .llm_server import LocalServer

    server = None
    if base_url:
        if not model:
            raise ValueError(f"llm_base_url={base_url!r} is set but llm_model is not: name the model "
                             "that endpoint serves (e.g. gpt-4o-mini).")
        ep = Endpoint(base_url=base_url.rstrip("/"), model=model, api_key_env=api_key_env)
    else:
        ep = endpoint_from_env()
        if ep is None:
            server = LocalServer(alias=EMBEDDED_ALIAS, n_threads=n_threads)
            ep = server.start()
    client = LLMClient(ep, Path(run_dir) / "llm_cache", concurrency=concurrency)
    return Judge(ep, client, server)


def judge_settings(judge: Judge, n_per_prompt: int | None = None,
                   logprobs: bool | None = None) -> dict[str, Any]:
    """How to ask this judge: ``n_per_prompt`` examples per prompt (None: 1 on the embedded model,
    which cannot answer with a list; else the reference's 5) and ``logprobs`` (None: True; an
    endpoint that serves none is detected and recorded, and AUROC is then NaN)."""
    n = n_per_prompt if n_per_prompt is not None else (1 if judge.is_embedded else 5)
    return {"n_per_prompt": int(n), "logprobs": True if logprobs is None else bool(logprobs)}


def usage_frame(results: Sequence[ScorerResult]):
    """Per latent: prompts, failed prompts, prompt / completion tokens, responses from the cache."""
    import pandas as pd

    rows = [{"latent": r.latent, "control": r.control or "real", "prompts": r.usage.get("n_prompts"),
             "failed prompts": r.usage.get("failed_prompts"), "prompt tokens": r.usage.get("prompt_tokens"),
             "completion tokens": r.usage.get("completion_tokens"), "cached": r.usage.get("cached")}
            for r in results]
    return pd.DataFrame(rows).set_index(["latent", "control"])


def failure_summary(results: Sequence[ScorerResult], n_show: int = 3) -> str:
    """How many prompts failed to parse, and a few of the reasons, in one paragraph."""
    n = sum(r.usage.get("n_prompts", 0) for r in results)
    bad = sum(r.usage.get("failed_prompts", 0) for r in results)
    reasons = list(dict.fromkeys(f["reason"] for r in results for f in r.usage.get("failures", ())))
    text = f"{bad} of {n} prompts ({bad / max(n, 1):.0%}) got an answer that could not be parsed"
    return text + (f"; for example: {'; '.join(reasons[:n_show])}." if reasons else ".")


def per_call_cost(results: Sequence[ScorerResult]) -> dict[str, float]:
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
    lo, hi = validity["diff_ci"]
    if lo > 0:
        return (f"The judge {judge.describe()} separates true from shuffled explanations of planted "
                f"latents ({metric} difference CI [{lo:+.3f}, {hi:+.3f}]): its scores of real "
                "latents are measurements, within their CIs.")
    weak = (" The embedded 135M model proves the mechanics only (OFFLINE.md measured it at chance "
            "as a detection judge)." if judge.is_embedded else "")
    return (f"The judge {judge.describe()} does NOT separate true from shuffled explanations even on "
            f"planted latents whose meaning is known ({metric} difference CI [{lo:+.3f}, {hi:+.3f}] "
            f"includes 0): no score in this chapter is a finding about the explanations.{weak} Point "
            "the chapter at a stronger model (llm_base_url / llm_model, or AUTOINTERP_LLM_BASE_URL "
            "and AUTOINTERP_LLM_MODEL) and rerun.")


__all__ = ["Judge", "open_judge", "judge_settings", "usage_frame", "failure_summary", "per_call_cost",
           "honesty_note", "EMBEDDED_ALIAS"]
