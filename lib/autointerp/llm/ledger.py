"""The ledger of an LLM client: requests, calls, cache hits, failures, retries, logprob
fallbacks, tokens and cost, in total and per request tag (what each chapter's cost table shows)."""
from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .client import ChatResponse


@dataclass
class _Tally:
    requests: int = 0            # achat calls
    calls: int = 0               # requests answered by the endpoint (not from the cache)
    cache_hits: int = 0
    failures: int = 0            # calls that ended with `error` set
    retries: int = 0             # extra HTTP tries beyond the first
    logprobs_fallbacks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0       # summed wall time of calls (excluding the wait for a free slot)


class Ledger:
    """What a client did, in total and per request tag: requests, calls, cache hits, failures,
    retries, logprob fallbacks, tokens and cost in USD (None without prices)."""

    def __init__(self, price_prompt_per_mtok: float | None = None,
                 price_completion_per_mtok: float | None = None) -> None:
        self.price_prompt_per_mtok = price_prompt_per_mtok
        self.price_completion_per_mtok = price_completion_per_mtok
        self._total = _Tally()
        self._by_tag: dict[str, _Tally] = {}
        self._lock = threading.Lock()

    requests = property(lambda self: self._total.requests)
    calls = property(lambda self: self._total.calls)
    cache_hits = property(lambda self: self._total.cache_hits)
    failures = property(lambda self: self._total.failures)
    retries = property(lambda self: self._total.retries)
    logprobs_fallbacks = property(lambda self: self._total.logprobs_fallbacks)
    prompt_tokens = property(lambda self: self._total.prompt_tokens)
    completion_tokens = property(lambda self: self._total.completion_tokens)
    cost_usd = property(lambda self: self._cost(self._total))

    def record(self, tag: str, resp: ChatResponse, latency_s: float = 0.0) -> None:
        with self._lock:
            for t in (self._total, self._by_tag.setdefault(tag, _Tally())):
                t.requests += 1
                if resp.cached:
                    t.cache_hits += 1
                    continue
                t.calls += 1
                t.retries += max(resp.attempts - 1, 0)
                t.failures += resp.error is not None
                t.logprobs_fallbacks += resp.logprobs_fallback
                t.prompt_tokens += resp.prompt_tokens
                t.completion_tokens += resp.completion_tokens
                t.latency_s += latency_s

    def _cost(self, t: _Tally) -> float | None:
        if self.price_prompt_per_mtok is None or self.price_completion_per_mtok is None:
            return None
        return (t.prompt_tokens * self.price_prompt_per_mtok
                + t.completion_tokens * self.price_completion_per_mtok) / 1e6

    def _row(self, t: _Tally) -> dict[str, Any]:
        row: dict[str, Any] = dataclasses.asdict(t)
        row["seconds_per_call"] = row.pop("latency_s") / t.calls if t.calls else None
        row["cost_usd"] = self._cost(t)
        return row

    def summary(self) -> dict[str, Any]:
        """Totals as a dict, with per-tag totals under "by_tag"."""
        with self._lock:
            out = self._row(self._total)
            out["by_tag"] = {tag: self._row(t) for tag, t in sorted(self._by_tag.items())}
        return out

    def to_frame(self):
        """One row per tag plus a 'total' row (pandas DataFrame indexed by tag)."""
        import pandas as pd

        s = self.summary()
        rows = {tag or "(untagged)": r for tag, r in s.pop("by_tag").items()}
        rows["total"] = s
        return pd.DataFrame.from_dict(rows, orient="index").rename_axis("tag")

    def __repr__(self) -> str:
        t, cost = self._total, self.cost_usd
        return (f"Ledger(requests={t.requests}, calls={t.calls}, cache_hits={t.cache_hits}, "
                f"failures={t.failures}, retries={t.retries}, logprobs_fallbacks={t.logprobs_fallbacks}, "
                f"tokens={t.prompt_tokens}+{t.completion_tokens}, "
                f"cost_usd={'n/a' if cost is None else f'{cost:.4f}'})")


__all__ = ["Ledger"]
