"""Simulation scorer (METHODS §4, OpenAI-style): the judge reads the explanation and one example's
tokens, numbered one per line, and predicts an integer activation 0-10 for every token.

- True levels: ``records.activation_levels(acts, latent_max)`` (0-10; negative acts are 0), where
  ``latent_max`` is the scorer's mapping or, without one, the max act over the latent's examples.
- Per example: ``score`` = the max predicted level over its tokens (``prediction`` stays None), so
  the latent's AUROC ranks activating above non-activating examples. ``metrics.correlation`` is
  the Pearson r of predicted vs true levels over all tokens of all parsed examples (NaN with
  fewer than 2 parsed examples or zero variance on either side).
- Parsing is strict: the last ``[..]`` list of the reply must hold exactly one integer 0..10 per
  token, else the example fails (score None, reason in ``usage["failures"]``), never a guess.
- ``logprobs=True``: each entry's level is the expected value over the digit alternatives served
  for the token where that entry begins (tokens reading 0..9 once spaces, brackets and commas are
  stripped; a token reading "10" counts 10). When the entry is 10 but its first token reads "1"
  (the number split as "1" + "0"), alternatives reading "1" count as 10 at that position.
  Expected values are used for a latent only when every parsed example has them; otherwise (no
  logprobs served, i.e. ``logprobs_fallback``, or tokens that do not line up with the reply) the
  parsed integers are used and ``usage["expected_unavailable"]`` says why.
All prompts of all latents go out in one ``LLMClient.run`` call.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..llm import ChatRequest, ChatResponse, LLMClient
from ..records import ScoredExample, ScorerResult, Window, activation_levels
from .base import check_inputs, check_windows, make_result
from .judge import (CORE, LIST_RE, Decode, digest, need_decode, render, settings_of, token_at,
                    token_text, usage)

MAX_LEVEL = 10
_ENTRY_RE = re.compile(r"[^,]+")
_DIGITS = {str(d): d for d in range(10)} | {"10": 10}


def parse_levels(reply: str, n: int) -> tuple[list[int] | None, str | None]:
    """(n levels 0..10, None) from the last ``[..]`` list of the reply, or (None, why it failed)."""
    found = LIST_RE.findall(reply)
    if not found:
        return None, f"no [..] list in the reply {reply[:80]!r}"
    parts = [p.strip() for p in found[-1].split(",")]
    bad = [p for p in parts if not p.isascii() or not p.isdigit()]
    if bad:
        return None, f"the list holds {bad[0][:20]!r}, not an integer 0..{MAX_LEVEL}"
    out = [int(p) for p in parts]
    if max(out) > MAX_LEVEL:
        return None, f"value {max(out)} is outside 0..{MAX_LEVEL}"
    if len(out) != n:
        return None, f"{len(out)} values for {n} tokens"
    return out, None


def _entry_starts(reply: str) -> list[int]:
    """Character offset of each entry (its first digit) in the reply's last [..] list."""
    last = list(LIST_RE.finditer(reply))[-1]
    return [last.start(1) + m.start() + len(m.group()) - len(m.group().lstrip())
            for m in _ENTRY_RE.finditer(last.group(1))]


def expected_level(alts: Sequence[tuple[str, float]], value: int) -> float | None:
    """Expected level over one position's digit alternatives (sampled token first), given the
    parsed ``value`` there; None when the sampled token does not begin that value."""
    sampled = alts[0][0].strip(CORE)
    if not sampled or not str(value).startswith(sampled):
        return None
    split10 = value == 10 and sampled == "1"
    num = den = 0.0
    for tok, lp in dict(alts).items():  # dict: the sampled token is listed twice
        v = _DIGITS.get(tok.strip(CORE))
        if v is not None:
            p = math.exp(lp)
            num += p * (10 if split10 and v == 1 else v)
            den += p
    return num / den if den > 0 else None


def expected_levels(top: Sequence[Sequence[tuple[str, float]]], reply: str, levels: Sequence[int]
                    ) -> tuple[list[float] | None, str | None]:
    """Expected level at each entry of the parsed list (see the module docstring)."""
    idx = token_at(top, reply, _entry_starts(reply))
    if idx is None or len(idx) != len(levels):
        return None, "the logprobs' tokens do not spell the reply"
    out = [expected_level(top[i], v) for i, v in zip(idx, levels)]
    if None in out:
        return None, "a list entry's first token does not read as its digits"
    return out, None


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson r; NaN with fewer than 2 points or zero variance on either side."""
    a, b = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


@dataclass(frozen=True)
class SimItem:
    """One example as the simulator sees it: its tokens and true 0-10 levels."""

    latent: int
    example_id: str
    label: bool
    quantile: int | None
    tokens: tuple[str, ...]
    text: str
    true_levels: tuple[int, ...]


@dataclass(frozen=True)
class SimulationScorer:
    """LLM simulation scorer; ``decode`` turns token ids into token strings."""

    client: LLMClient = field(repr=False)
    decode: Decode | None = field(default=None, repr=False)
    logprobs: bool = False  # expected levels from the served alternatives
    top_logprobs: int = 5
    max_tokens: int | None = None  # None: 3 per token + 8 (a digit and ', ' per entry, with room)
    temperature: float = 0.0
    seed: int = 0
    name: str = "simulation"
    # scale of the true 0-10 levels per latent; None: the max act over that latent's examples
    latent_max: Mapping[int, float] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.logprobs and not 2 <= self.top_logprobs <= 20:
            raise ValueError(f"logprobs=True needs top_logprobs in 2..20, got {self.top_logprobs}.")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}.")

    # -- prompts -----------------------------------------------------------------------------
    def system_prompt(self) -> str:
        return ("You are an interpretability researcher studying one feature of a language model. "
                "You get an explanation of what the feature responds to and one text excerpt split "
                "into numbered tokens. Predict how strongly the feature activates on each token, as "
                f"an integer from 0 (not at all) to {MAX_LEVEL} (as strongly as it ever does); most "
                "tokens are usually 0. Answer with one list of integers, one per token in order, "
                "for example [0, 0, 7, 0], and nothing else.")

    def _user(self, explanation: str, tokens: Sequence[str]) -> str:
        lines = "\n".join(f"{i + 1}. {t!r}" for i, t in enumerate(tokens))
        return (f"Explanation: {explanation}\n\nTokens:\n{lines}\n\nAnswer with a list of "
                f"{len(tokens)} integers from 0 to {MAX_LEVEL}, one per token, e.g. [0, 0, 7, 0].")

    @property
    def settings(self) -> dict[str, Any]:
        d = settings_of(self, ("client", "decode", "latent_max"))
        return {**d, "latent_max": "given" if self.latent_max is not None else "max of the examples"}

    @property
    def prompt_hash(self) -> str:
        """sha256 (16 hex) of the prompt template and every setting."""
        return digest({"system": self.system_prompt(), "settings": self.settings,
                        "user": self._user("<explanation>", ["<token>"])})

    def items(self, latent: int, examples: Sequence[Window]) -> list[SimItem]:
        """One latent's examples with decoded tokens and true levels (checked)."""
        check_windows(self.name, {latent: examples})
        decode = need_decode(self.name, self.decode)
        if self.latent_max is None:
            scale = max((max(e.acts, default=0.0) for e in examples), default=0.0)
        elif latent in self.latent_max:
            scale = float(self.latent_max[latent])
        else:
            raise ValueError(f"latent_max has no entry for latent {latent}: add one or pass "
                             "latent_max=None (scale = the max act over its examples).")
        out = []
        for e in examples:
            toks, text = token_text(e, decode)
            if not toks or len(toks) != len(e.acts):
                raise ValueError(f"Latent {latent}, example {e.row}:{e.start}: {len(toks)} tokens "
                                 f"for {len(e.acts)} activations; each window needs >= 1 token "
                                 "and one activation per token.")
            out.append(SimItem(e.latent, e.id, e.label, e.quantile, toks, text,
                               tuple(int(v) for v in activation_levels(np.asarray(e.acts), scale))))
        return out

    def messages(self, explanation: str, item: SimItem) -> tuple[tuple[str, str], ...]:
        return (("system", self.system_prompt()), ("user", self._user(explanation, item.tokens)))

    def render_prompt(self, explanation: str, examples: Sequence[Window], index: int = 0) -> str:
        """The prompt of example ``index`` exactly as sent, each message under a role header."""
        return render(self.messages(explanation, self.items(examples[index].latent, examples)[index]))

    def _request(self, explanation: str, item: SimItem) -> ChatRequest:
        return ChatRequest(self.messages(explanation, item),
                           self.max_tokens or 3 * len(item.tokens) + 8, self.temperature,
                           logprobs=self.logprobs,
                           top_logprobs=self.top_logprobs if self.logprobs else 0,
                           seed=self.seed, tag=self.name)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[Window]]) -> list[ScorerResult]:
        """Score each latent of ``explanations``; one ``client.run`` call for all prompts."""
        items = {k: self.items(k, v) for k, v in examples.items() if k in explanations}
        latents = check_inputs(explanations, items)
        reqs = [self._request(explanations[lat], it) for lat in latents for it in items[lat]]
        resps = self.client.run(reqs, desc=self.name)
        out, i = [], 0
        for lat in latents:
            n = len(items[lat])
            out.append(self._result(lat, explanations[lat], items[lat], resps[i:i + n]))
            i += n
        return out

    def _result(self, latent: int, explanation: str, items: Sequence[SimItem],
                resps: Sequence[ChatResponse]) -> ScorerResult:
        parsed: list[list[int] | None] = []
        failures: list[dict[str, Any]] = []
        for it, r in zip(items, resps):
            levels, why = (None, r.error) if r.error else parse_levels(r.text or "", len(it.tokens))
            parsed.append(levels)
            if levels is None:
                failures.append({"example_id": it.example_id, "reason": why, "reply": r.text})
        preds: list[Sequence[float] | None] = list(parsed)
        unavailable = None
        if self.logprobs:
            if any(r.logprobs_fallback for r in resps):
                unavailable = ("logprobs were requested but the endpoint served none "
                               "(logprobs_fallback): the parsed integer levels are used")
            else:
                expected = []
                for it, r, lv in zip(items, resps, parsed):
                    ev, why = (None, None) if lv is None else expected_levels(
                        r.top_logprobs or (), r.text or "", lv)
                    if lv is not None and ev is None:
                        unavailable = (f"example {it.example_id}: {why}; the parsed integer "
                                       "levels are used for this latent")
                        break
                    expected.append(ev)
                else:
                    preds = expected
        ok = [j for j, p in enumerate(preds) if p is not None]
        r_ = pearson([v for j in ok for v in preds[j]], [v for j in ok for v in items[j].true_levels])
        if len(ok) < 2:
            r_ = float("nan")
        scored = [ScoredExample(latent, it.example_id, it.text, it.label, it.quantile,
                                score=None if p is None else float(max(p)))
                  for it, p in zip(items, preds)]
        use = usage(self, resps, len(items), failures, failed_prompts=len(failures))
        use["predicted"] = {it.example_id: lv for it, lv in zip(items, parsed) if lv is not None}
        if self.logprobs:
            use["used_expected"] = unavailable is None
            if unavailable is None:
                use["expected"] = {it.example_id: [round(v, 3) for v in p]
                                   for it, p in zip(items, preds) if p is not None}
            else:
                use["expected_unavailable"] = unavailable
        res = make_result(latent, self.name, explanation, scored, usage=use)
        return dataclasses.replace(res, metrics=dataclasses.replace(res.metrics, correlation=r_))


__all__ = ["SimulationScorer", "SimItem", "parse_levels", "expected_level", "expected_levels",
           "token_at", "pearson", "MAX_LEVEL"]
