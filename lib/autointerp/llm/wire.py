"""The OpenAI chat wire format, shared by live calls (``client``) and batch jobs (``batch``): the JSON
body sent for a ``ChatRequest``, the parse of a chat completion, and how a failed try is classed
(``Retry`` may succeed when repeated, ``Fatal`` will not) with the server's Retry-After."""
from __future__ import annotations

import email.utils
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ChatRequest


class Retry(Exception):
    """A failed try that may succeed when repeated."""

    def __init__(self, message: str, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status, self.retry_after = status, retry_after


class Fatal(Retry):
    """A failed try that repeating will not fix (e.g. HTTP 400/401/404)."""


def retry_after_s(headers: Any) -> float | None:
    """Seconds to wait from retry-after-ms, or Retry-After (seconds or HTTP date); None if absent."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name) if headers is not None else None
        if not value:
            continue
        try:
            return max(float(value) * scale, 0.0)
        except ValueError:
            try:
                return max(email.utils.parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
            except (TypeError, ValueError):
                continue
    return None


def request_body(model: str, req: "ChatRequest", use_lp: bool) -> dict[str, Any]:
    """The JSON body sent for ``req`` (a completion request's carries ``prompt``, not ``messages``)."""
    kwargs: dict[str, Any] = dict(model=model, max_tokens=req.max_tokens, temperature=req.temperature,
                                  seed=req.seed)
    if req.stop:
        kwargs["stop"] = list(req.stop)
    if req.completion:
        return {**kwargs, "prompt": req.messages[0][1]}
    kwargs["messages"] = [{"role": r, "content": c} for r, c in req.messages]
    if use_lp:
        kwargs["logprobs"] = True
        if req.top_logprobs:
            kwargs["top_logprobs"] = req.top_logprobs
    return kwargs


def parse_chat(data: Any, use_lp: bool) -> tuple[str, tuple | None, tuple[int, int]]:
    """(text, top_logprobs, (prompt_tokens, completion_tokens)) of a chat completion's JSON."""
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise Retry(f"malformed response (not a chat completion with choices): {str(data)[:200]!r}")
    text = message.get("content") if isinstance(message, dict) else None
    if not isinstance(text, str):
        raise Fatal(f"the endpoint returned no text (finish_reason="
                    f"{choice.get('finish_reason')!r}); raise max_tokens or check the model")
    usage = data.get("usage") or {}
    counts = (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))
    top = None
    content = ((choice.get("logprobs") or {}).get("content") or []) if use_lp else []
    if content:
        try:
            top = tuple(((t["token"], float(t["logprob"])),) + tuple(
                (a["token"], float(a["logprob"])) for a in (t.get("top_logprobs") or ()))
                for t in content)
        except (KeyError, TypeError, ValueError):
            raise Retry(f"malformed logprobs in response: {str(content)[:200]!r}")
    return text, top, counts
