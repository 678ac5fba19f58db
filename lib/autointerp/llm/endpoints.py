"""Where LLM requests go: the ``Endpoint`` record, and THE resolver of a chapter's endpoint.

``connect(base_url, model, api_key_env)`` takes an explicit endpoint (a chapter's ``llm_base_url``
/ ``llm_model``), else the environment's (``endpoint_from_env``), else starts the embedded SmolLM2
behind a local llama.cpp server on 127.0.0.1 and returns it with the server to stop.
``open_endpoint`` is the same as a context manager. What an endpoint can do (logprobs, lists,
context length) is part of the ``Endpoint``: set by the server that serves it or by the
environment, never guessed from a model's name. API keys are never stored: only the name of the
environment variable that holds one.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse, urlunparse

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class Endpoint:
    """Where to send chat requests. The API key itself is never stored: only the env var's name."""

    base_url: str
    model: str
    api_key_env: str = "OPENAI_API_KEY"
    price_prompt_per_mtok: float | None = None
    price_completion_per_mtok: float | None = None
    supports_logprobs: bool | None = None  # None = unknown, learned at first use
    # What the endpoint can do (a setting or a measurement, never a guess from the model's name):
    lists: bool = True  # answers "one list of n numbers" reliably (judges show n examples per prompt)
    context_tokens: int | None = None  # prompt + reply budget, when known
    embedded: bool = False  # the embedded 135M model behind the local server: a mechanics check only
    batch: bool = False  # send a stage's uncached requests as one OpenAI Batch API job first (llm/batch.py)
    batch_poll_s: float = 30.0  # seconds between polls of a batch job

    @property
    def is_local(self) -> bool:
        return (urlparse(self.base_url).hostname or "") in LOCAL_HOSTS


def _env_float(name: str) -> float | None:
    value = os.environ.get(name, "").strip()
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number (USD per million tokens)") from None


def _env_bool(name: str) -> bool | None:
    value = os.environ.get(name, "").strip().lower()
    if not value:
        return None
    known = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    if value not in known:
        raise ValueError(f"{name}={value!r}: use 1 or 0.")
    return known[value]


def endpoint_from_env() -> Endpoint | None:
    """The endpoint configured in the environment, or None when no base URL is set.

    Base URL: AUTOINTERP_LLM_BASE_URL, else OPENAI_BASE_URL. Model: AUTOINTERP_LLM_MODEL, else
    OPENAI_MODEL (required once a base URL is set). Key: the env var named by
    AUTOINTERP_LLM_API_KEY_ENV, else AUTOINTERP_LLM_API_KEY if set, else OPENAI_API_KEY. Optional:
    AUTOINTERP_LLM_PRICE_PROMPT / AUTOINTERP_LLM_PRICE_COMPLETION (USD per million tokens) and
    AUTOINTERP_LLM_LOGPROBS (1/0) when the endpoint's logprob support is known,
    AUTOINTERP_LLM_LISTS (1/0: whether it can answer with a list), AUTOINTERP_LLM_CONTEXT
    (its context length in tokens) and AUTOINTERP_LLM_BATCH (1: send each stage's requests as one
    Batch API job first; hosted APIs charge about half and answer within 24 h).
    """
    base_url = os.environ.get("AUTOINTERP_LLM_BASE_URL") or os.environ.get("OPENAI_BASE_URL")
    model = os.environ.get("AUTOINTERP_LLM_MODEL") or os.environ.get("OPENAI_MODEL")
    if not base_url:
        if model:
            raise ValueError(
                f"An LLM model is set ({model!r}) but no base URL: set AUTOINTERP_LLM_BASE_URL "
                "(e.g. https://api.openai.com/v1 or https://openrouter.ai/api/v1), or unset "
                "AUTOINTERP_LLM_MODEL/OPENAI_MODEL to use the embedded local server."
            )
        return None
    if not model:
        raise ValueError(
            f"AUTOINTERP_LLM_BASE_URL/OPENAI_BASE_URL is set ({base_url}) but no model: set "
            "AUTOINTERP_LLM_MODEL (e.g. gpt-4o-mini) to the model name the endpoint serves."
        )
    key_env = os.environ.get("AUTOINTERP_LLM_API_KEY_ENV") or (
        "AUTOINTERP_LLM_API_KEY" if os.environ.get("AUTOINTERP_LLM_API_KEY") else "OPENAI_API_KEY")
    context = _env_float("AUTOINTERP_LLM_CONTEXT")
    return Endpoint(base_url=base_url.rstrip("/"), model=model, api_key_env=key_env,
                    price_prompt_per_mtok=_env_float("AUTOINTERP_LLM_PRICE_PROMPT"),
                    price_completion_per_mtok=_env_float("AUTOINTERP_LLM_PRICE_COMPLETION"),
                    supports_logprobs=_env_bool("AUTOINTERP_LLM_LOGPROBS"),
                    lists=_env_bool("AUTOINTERP_LLM_LISTS") is not False,
                    batch=_env_bool("AUTOINTERP_LLM_BATCH") is True,
                    context_tokens=None if context is None else int(context))


def safe_url(url: str) -> str:
    """A base URL without user info, query or fragment (never a key)."""
    p = urlparse(url)
    return urlunparse((p.scheme, p.hostname + (f":{p.port}" if p.port else "") if p.hostname else "",
                       p.path, "", "", ""))


def check_reachable(endpoint: Endpoint, timeout_s: float = 5.0) -> None:
    """Raise one clear error when nothing listens at the endpoint's host and port."""
    import socket

    u = urlparse(endpoint.base_url)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname or "", port), timeout=timeout_s).close()
    except OSError as err:
        raise ConnectionError(f"Cannot reach the LLM endpoint {safe_url(endpoint.base_url)} ({err}). Nothing "
                              "was sent: start that server, or fix AUTOINTERP_LLM_BASE_URL (or base_url=...).") from None


def explicit_endpoint(base_url: str, model: str | None,
                      api_key_env: str = "OPENAI_API_KEY") -> Endpoint:
    """The endpoint a chapter's ``llm_base_url`` / ``llm_model`` / ``llm_api_key_env`` name."""
    if not model:
        raise ValueError(f"llm_base_url={base_url!r} is set but llm_model is not: name the model "
                         "that endpoint serves (e.g. gpt-4o-mini).")
    return Endpoint(base_url=base_url.rstrip("/"), model=model, api_key_env=api_key_env)


def connect(base_url: str | None = None, model: str | None = None,
            api_key_env: str = "OPENAI_API_KEY", **local: Any) -> tuple[Endpoint, Any]:
    """``(endpoint, server)``: explicit, else the environment's, else the embedded local server,
    started now (``server`` is then the ``server.LocalServer`` to stop, else None). ``local``
    keyword arguments go to ``LocalServer``."""
    if base_url:
        return explicit_endpoint(base_url, model, api_key_env), None
    ep = endpoint_from_env()
    if ep is not None:
        return ep, None
    from .server import LocalServer

    srv = LocalServer(**local)
    return srv.start(), srv


@contextmanager
def open_endpoint(base_url: str | None = None, model: str | None = None,
                  api_key_env: str = "OPENAI_API_KEY", **local: Any) -> Iterator[Endpoint]:
    """``connect`` as a context manager: a local server it started stops at the end."""
    ep, srv = connect(base_url, model, api_key_env, **local)
    try:
        yield ep
    finally:
        if srv is not None:
            srv.stop()


__all__ = ["Endpoint", "endpoint_from_env", "safe_url", "explicit_endpoint", "connect", "open_endpoint",
           "LOCAL_HOSTS"]
