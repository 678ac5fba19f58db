"""What every LLM-judge scorer shares (detection, fuzzing, simulation, intruder): how a window is
shown as text, the answer-parsing primitives, prompt rendering and hashing, and the usage record.

Two ways to show a window: ``plain_text`` decodes its token ids together (what a reader sees;
detection and the text scorers use it) and ``token_text`` joins the tokens decoded one by one
(the form marks can be placed in; fuzzing, simulation and the intruder test use it). Newlines
are escaped so one excerpt stays on one line of the prompt.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ..explain import highlight
from ..results import digest
from ..records import Window

Decode = Callable[[Iterable[int]], list[str]]  # token ids -> one string per token (examples.TokenDecoder)
LIST_RE = re.compile(r"\[([^\[\]]*)\]")
CORE = " \t\n[],."  # stripped from a logprob token before it is read as a digit


def need_decode(name: str, decode: Decode | None) -> Decode:
    if decode is None:
        raise ValueError(f"{name}: Window records need decode= (e.g. examples.TokenDecoder(tokenizer)) "
                         "to turn token ids into text.")
    return decode


def plain_text(window: Window, decode: Decode) -> str:
    """The window's ids decoded together (special tokens dropped), newlines escaped."""
    tok = getattr(decode, "tokenizer", None)
    text = (tok.decode(list(window.token_ids), skip_special_tokens=True) if tok is not None
            else "".join(decode(window.token_ids)))
    return text.replace("\r", "").replace("\n", "\\n")


def token_text(window: Window, decode: Decode) -> tuple[tuple[str, ...], str]:
    """``(tokens, text)``: each token decoded alone, and their join with no marks."""
    toks = tuple(decode(window.token_ids))
    return toks, highlight(toks, [False] * len(toks))


def settings_of(scorer: Any, exclude: Sequence[str] = ("client", "decode")) -> dict[str, Any]:
    """A dataclass scorer's settings: every field but the live objects."""
    return {f.name: getattr(scorer, f.name) for f in dataclasses.fields(scorer) if f.name not in exclude}


def render(messages: Sequence[tuple[str, str]]) -> str:
    """Messages exactly as sent, each under a role header (for the chapters)."""
    return "\n\n".join(f"=== {role} ===\n{content}" for role, content in messages)


def p_one(alts: Sequence[tuple[str, float]]) -> float | None:
    """P(1)/(P(0)+P(1)) over one position's served alternatives; None if neither is served."""
    p = {"0": 0.0, "1": 0.0}
    for tok, lp in dict(alts).items():  # dict: the sampled token is listed twice
        if tok.strip(CORE) in p:
            p[tok.strip(CORE)] += math.exp(lp)
    return p["1"] / (p["0"] + p["1"]) if p["0"] + p["1"] > 0 else None


def token_at(top: Sequence[Sequence[tuple[str, float]]], reply: str,
             offsets: Sequence[int]) -> list[int] | None:
    """Index of the generated token holding each character offset of ``reply``; None when the
    logprob tokens do not spell the reply."""
    import bisect

    starts, pos = [], 0
    for alts in top:
        starts.append(pos)
        pos += len(alts[0][0])
    if "".join(a[0][0] for a in top) != reply:
        return None
    return [bisect.bisect_right(starts, c) - 1 for c in offsets]


def usage(scorer: Any, resps: Sequence[Any], n_prompts: int, failures: list[dict[str, Any]],
          **extra: Any) -> dict[str, Any]:
    """The usage record every judge result carries: model, prompt hash, settings, prompts, tokens,
    cache hits, failed prompts and why."""
    return {"model": scorer.client.endpoint.model, "prompt_hash": scorer.prompt_hash,
            "settings": scorer.settings, "n_prompts": n_prompts,
            "prompt_tokens": sum(r.prompt_tokens for r in resps),
            "completion_tokens": sum(r.completion_tokens for r in resps),
            "cached": sum(r.cached for r in resps), **extra, "failures": failures}


__all__ = ["Decode", "LIST_RE", "CORE", "need_decode", "plain_text", "token_text", "digest",
           "settings_of", "render", "p_one", "token_at", "usage"]
