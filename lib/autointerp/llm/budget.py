"""What an LLM stage will cost before it runs, and a cap it cannot pass.

``Budget`` (from the environment: AUTOINTERP_LLM_MAX_CALLS, AUTOINTERP_LLM_MAX_COST in USD,
AUTOINTERP_LLM_DRY_RUN=1) is checked by ``LLMClient`` before every request it would send: a request
the cap does not leave room for comes back failed with the reason ("spending cap ..."), is not
cached, and is sent by a rerun with a higher cap, so finished work is kept and never paid twice.
``estimate`` sizes the planned work: calls not yet in the cache, prompt tokens (characters / 3,
on the high side for English and code), completion tokens at most ``max_tokens`` each, and the
cost at the endpoint's prices. In a dry run nothing is sent: every uncached request fails with
"dry run" and the estimate is printed.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

CHARS_PER_TOKEN = 3.0  # prompt tokens estimated from characters: high for English (about 4) and code


@dataclass(frozen=True)
class Budget:
    max_calls: int | None = None  # HTTP calls (retries included) this client may make
    max_cost: float | None = None  # USD, at the endpoint's prices (needs them set)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.max_calls is not None and self.max_calls < 0:
            raise ValueError(f"max_calls must be >= 0, got {self.max_calls}.")
        if self.max_cost is not None and self.max_cost < 0:
            raise ValueError(f"max_cost must be >= 0 USD, got {self.max_cost}.")

    @classmethod
    def from_env(cls) -> Budget:
        def num(name: str, kind):
            raw = os.environ.get(name, "").strip()
            if not raw:
                return None
            try:
                return kind(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not a number: set it to e.g. "
                                 f"{'500' if kind is int else '2.50'}, or unset it.") from None

        dry = os.environ.get("AUTOINTERP_LLM_DRY_RUN", "").strip().lower() in ("1", "true", "yes")
        return cls(num("AUTOINTERP_LLM_MAX_CALLS", int), num("AUTOINTERP_LLM_MAX_COST", float), dry)


@dataclass(frozen=True)
class Estimate:
    """The planned work of one ``LLMClient.run``: requests, those the cache answers, the calls
    left to send, their tokens (prompt estimated, completion at most) and cost (None without prices)."""

    requests: int
    cached: int
    to_send: int
    prompt_tokens: int
    max_completion_tokens: int
    cost_usd: float | None

    def text(self, desc: str = "LLM") -> str:
        cost = "" if self.cost_usd is None else f", at most ~${self.cost_usd:.4f}"
        return (f"[{desc}] {self.requests} requests: {self.cached} answered by the cache, {self.to_send} to send "
                f"(~{self.prompt_tokens:,} prompt tokens, <= {self.max_completion_tokens:,} completion tokens{cost})")


class Spending:
    """What one client has spent against its ``Budget``: HTTP tries sent and their estimated cost."""

    def __init__(self, budget: Budget, price_prompt: float | None, price_completion: float | None) -> None:
        if budget.max_cost is not None and None in (price_prompt, price_completion):
            raise ValueError("A cost cap (max_cost) needs the endpoint's prices: set AUTOINTERP_LLM_PRICE_PROMPT "
                             "and AUTOINTERP_LLM_PRICE_COMPLETION (USD per million tokens), or cap calls instead "
                             "(AUTOINTERP_LLM_MAX_CALLS).")
        self.budget, self.prices = budget, (price_prompt, price_completion)
        self.calls = 0  # what max_calls caps
        self.committed_usd = 0.0  # what max_cost caps

    def request_cost(self, messages, max_tokens: int) -> float:
        return cost(prompt_tokens(messages), max_tokens, *self.prices) or 0.0

    def refusal(self, messages, max_tokens: int) -> str | None:
        """Why the next try may not be sent (None: it may). Checked before every try."""
        b = self.budget
        if b.max_calls is not None and self.calls >= b.max_calls:
            return (f"spending cap: max_calls={b.max_calls} reached; finished answers are cached, rerun with a "
                    "higher AUTOINTERP_LLM_MAX_CALLS to go on")
        if b.max_cost is not None and self.committed_usd + self.request_cost(messages, max_tokens) > b.max_cost:
            return (f"spending cap: max_cost=${b.max_cost:g} would be passed (${self.committed_usd:.4f} committed); "
                    "finished answers are cached, rerun with a higher AUTOINTERP_LLM_MAX_COST to go on")
        return None

    def spend(self, messages, max_tokens: int) -> None:
        self.calls += 1
        self.committed_usd += self.request_cost(messages, max_tokens)

    def caps(self) -> str:
        b = self.budget
        return ", ".join(x for x in (f"max_calls={b.max_calls}" if b.max_calls is not None else "",
                                     f"max_cost=${b.max_cost:g}" if b.max_cost is not None else "",
                                     "DRY RUN: nothing is sent" if b.dry_run else "") if x)


def prompt_tokens(messages) -> int:
    return int(sum(len(c) for _, c in messages) / CHARS_PER_TOKEN) + 4 * len(messages)


def cost(prompt: int, completion: int, price_prompt: float | None, price_completion: float | None) -> float | None:
    if price_prompt is None or price_completion is None:
        return None
    return (prompt * price_prompt + completion * price_completion) / 1e6


__all__ = ["Budget", "Estimate", "Spending", "CHARS_PER_TOKEN", "prompt_tokens", "cost"]
