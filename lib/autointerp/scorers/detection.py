"""Detection scorer (METHODS §4): an LLM judge answers 0/1 per example.

``DetectionScorer``: n examples per prompt (default 5), a seeded shuffled mix of activating and
non-activating, no highlights, plus the explanation; the judge answers a list ``[1, 0, ...]``.
``fuzzing.FuzzingScorer`` is the same judge with << >> marks.

Inputs: ``examples`` maps latent -> ``records.Window`` records (label = activating, id
``"row:start"``); ``decode`` (``examples.TokenDecoder``) turns their ids into text.

Answers are parsed strictly: no list, a non-0/1 entry or a wrong length fails every example of
that prompt (prediction None; the reason is in ``usage["failures"]``), never a guess.
``logprobs=True`` also scores each example as P(1)/(P(0)+P(1)) (an answer outside the served
top-k counts as probability 0): with ``n_per_prompt=1`` (one example per prompt, the judge asked
for one digit) at the first generated token; with n > 1 at each position of the parsed list. An
answer that does not parse gives neither a prediction nor a score. If any response came back without logprobs (``logprobs_fallback``)
the latent gets no scores and ``usage["auroc_unavailable"]`` says why: AUROC is NaN, never
substituted. Scores that cannot be read are listed in ``usage["score_failures"]``.
All prompts of all latents go out in one ``LLMClient.run`` call.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..llm import ChatRequest, ChatResponse, LLMClient
from ..metrics import latent_metrics
from ..records import LatentExamples, ScoredExample, ScorerResult, Window
from .base import check_inputs, check_windows
from .judge import CORE, LIST_RE, Decode, digest, need_decode, p_one, plain_text, render, settings_of, usage


@dataclass(frozen=True)
class Shown:
    """One example as placed in a prompt: its display text and the token indices marked."""

    latent: int
    example_id: str | int
    label: bool
    quantile: int | None
    text: str  # exactly as in the prompt (with << >> for fuzzing); kept in ScoredExample.text
    marked: tuple[int, ...] = ()


@dataclass(frozen=True)
class JudgePrompt:
    """One prompt: its messages and the examples it shows, in order."""

    latent: int
    messages: tuple[tuple[str, str], ...]
    shown: tuple[Shown, ...]


def scoring_examples(lexs: Sequence[LatentExamples], *, hard_negatives: bool = False) -> dict[int, list[Window]]:
    """latent -> test activating + random negatives (+ hard negatives) of every non-skipped latent."""
    return {x.latent: [*x.test_activating, *x.test_negative,
                       *(x.test_hard_negative if hard_negatives else ())]
            for x in lexs if not x.skipped}


def parse_verdicts(reply: str, n: int) -> tuple[list[int] | None, str | None]:
    """(n 0/1 answers, None) from the last [..] list of the reply, or (None, why it failed).
    For n == 1 a reply whose first line is exactly "0" or "1" is accepted too."""
    first = reply.strip().split("\n", 1)[0].strip()
    if n == 1 and first in ("0", "1"):
        return [int(first)], None
    found = LIST_RE.findall(reply)
    if not found:
        asked = "the single digit 0 or 1 asked for" if n == 1 else f"a [..] list of {n} answers"
        return None, f"the reply {reply[:80]!r} is not {asked}"
    parts = [p.strip() for p in found[-1].split(",")]
    if any(p not in ("0", "1") for p in parts):
        return None, f"the list [{found[-1][:60]}] holds something other than 0/1"
    if len(parts) != n:
        return None, f"{len(parts)} answers for {n} examples"
    return [int(p) for p in parts], None


def first_token_probability(top: Sequence[Sequence[tuple[str, float]]]) -> tuple[float | None, str | None]:
    """One example per prompt: P(1)/(P(0)+P(1)) at the first generated token (tokens reading 0
    or 1 once brackets and spaces are stripped count), whatever the rest of the reply says."""
    p = p_one(top[0]) if top else None
    return (p, None) if p is not None else (None, "neither '0' nor '1' among the first token's top logprobs")


def list_probabilities(top: Sequence[Sequence[tuple[str, float]]], verdicts: Sequence[int]
                       ) -> tuple[list[float] | None, str | None]:
    """P(1)/(P(0)+P(1)) at each list position: the last len(verdicts) generated tokens that read
    0 or 1 (brackets, commas and spaces stripped), checked against the parsed verdicts."""
    pos = [i for i, alts in enumerate(top) if alts and alts[0][0].strip(CORE) in ("0", "1")]
    pos = pos[-len(verdicts):]
    if len(pos) != len(verdicts) or [int(top[i][0][0].strip(CORE)) for i in pos] != list(verdicts):
        return None, "the logprobs' tokens do not line up with the parsed answer"
    probs = [p_one(top[i]) for i in pos]
    return (None, "a list position lacks both '0' and '1' in its top logprobs") if None in probs else (probs, None)


@dataclass(frozen=True)
class _Item:
    """One example ready for a prompt: its tokens (decoded one by one) and plain text."""

    latent: int
    example_id: str
    label: bool
    quantile: int | None
    tokens: tuple[str, ...]
    text: str
    acts: tuple[float, ...]


@dataclass(frozen=True)
class DetectionScorer:
    """LLM detection scorer; ``client`` sends the prompts, ``decode`` turns token ids into text."""

    client: LLMClient = field(repr=False)
    decode: Decode | None = field(default=None, repr=False)
    n_per_prompt: int = 5
    logprobs: bool = False  # also read P(1) per example (AUROC); needs an endpoint serving them
    top_logprobs: int = 5
    max_tokens: int | None = None  # None: 3 tokens per answer + 8
    temperature: float = 0.0
    seed: int = 0
    name: str = "detection"

    highlights: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.n_per_prompt < 1:
            raise ValueError(f"n_per_prompt must be >= 1, got {self.n_per_prompt}.")
        if self.logprobs and self.top_logprobs < 2:
            raise ValueError("logprobs=True needs top_logprobs >= 2 to see both '0' and '1'.")
        if self.logprobs and self.client.endpoint.supports_logprobs is False:
            raise ValueError(f"logprobs=True, but the endpoint {self.client.endpoint.model!r} is declared to serve "
                             "no logprobs (AUTOINTERP_LLM_LOGPROBS=0): pass logprobs=False (binary metrics, no "
                             "AUROC) or use an endpoint that serves them.")

    # -- prompts -----------------------------------------------------------------------------
    def _task(self) -> str:
        return ("Decide for each excerpt whether it contains what the explanation describes: "
                "1 if it does, 0 if it does not.")

    def system_prompt(self, n: int) -> str:
        """Instructions for prompts of n examples (one digit, or a list). It does not depend on how
        many examples a list prompt holds (the user message says), so every prompt of a run starts
        with the same tokens and one latent's prompts share everything up to the excerpts: what a
        prefix-caching server (vLLM, llama.cpp, hosted APIs) computes once (bench/prompt_tokens.py)."""
        answer = ("Answer with a single digit, 1 or 0, and nothing else." if n == 1 else
                  "Answer with one list of numbers, one per excerpt in order, for example "
                  "[1, 0, 0, 1, 0], and nothing else.")
        return ("You are an interpretability researcher studying one feature of a language model. "
                "You get an explanation of what the feature responds to and numbered text "
                f"excerpts. {self._task()} {answer}")

    @property
    def settings(self) -> dict[str, Any]:
        return {**settings_of(self), "highlights": self.highlights}

    @property
    def prompt_hash(self) -> str:
        """sha256 (16 hex) of the prompt template and every setting."""
        return digest({"system": self.system_prompt(self.n_per_prompt), "settings": self.settings,
                        "user": self._user("<explanation>", ["<example>"])})

    def _user(self, explanation: str, texts: Sequence[str]) -> str:
        lines = "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))
        ask = "Answer with 1 or 0." if len(texts) == 1 else f"Answer with a list of {len(texts)} numbers (0 or 1)."
        return f"Explanation: {explanation}\n\n{lines}\n\n{ask}"

    def _items(self, latent: int, exs: Sequence[Window]) -> list[_Item]:
        check_windows(self.name, {latent: exs})
        decode = need_decode(self.name, self.decode)
        return [_Item(e.latent, e.id, e.label, e.quantile, tuple(decode(e.token_ids)),
                      plain_text(e, decode), e.acts) for e in exs]

    def _shown(self, latent: int, items: Sequence[_Item]) -> list[Shown]:
        return [Shown(latent, it.example_id, it.label, it.quantile, it.text) for it in items]

    def prompts(self, latent: int, explanation: str, examples: Sequence[Window]) -> list[JudgePrompt]:
        """One latent's prompts: its examples shuffled (seeded by ``[seed, latent]``) in groups."""
        shown = self._shown(latent, self._items(latent, examples))
        order = np.random.default_rng([self.seed, latent]).permutation(len(shown))
        shown = [shown[i] for i in order]
        n = self.n_per_prompt
        return [JudgePrompt(latent, (("system", self.system_prompt(len(g))),
                                     ("user", self._user(explanation, [s.text for s in g]))),
                            tuple(g))
                for g in (shown[i:i + n] for i in range(0, len(shown), n))]

    def render_prompt(self, explanation: str, examples: Sequence[Window], index: int = 0) -> str:
        """Prompt ``index`` of a latent exactly as sent, each message under a role header."""
        return render(self.prompts(examples[0].latent, explanation, examples)[index].messages)

    def _request(self, p: JudgePrompt) -> ChatRequest:
        return ChatRequest(p.messages, self.max_tokens or 3 * len(p.shown) + 8, self.temperature,
                           logprobs=self.logprobs, top_logprobs=self.top_logprobs if self.logprobs else 0,
                           seed=self.seed, tag=self.name)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[Window]]) -> list[ScorerResult]:
        """Score each latent of ``explanations``; one ``client.run`` call for all prompts."""
        check_windows(self.name, {k: v for k, v in examples.items() if k in explanations})
        latents = check_inputs(explanations, {k: v for k, v in examples.items() if k in explanations})
        jobs = [(lat, self.prompts(lat, explanations[lat], examples[lat])) for lat in latents]
        resps = self.client.run([self._request(p) for _, ps in jobs for p in ps], desc=self.name)
        out, i = [], 0
        for lat, ps in jobs:
            out.append(self._result(lat, explanations[lat], ps, resps[i:i + len(ps)]))
            i += len(ps)
        return out

    def _result(self, latent: int, explanation: str, prompts: Sequence[JudgePrompt],
                resps: Sequence[ChatResponse]) -> ScorerResult:
        scored: list[ScoredExample] = []
        failures: list[dict[str, Any]] = []
        score_failures: list[dict[str, Any]] = []
        fallback = self.logprobs and any(r.logprobs_fallback for r in resps)  # then no P(1) at all
        n_failed = 0
        for p, r in zip(prompts, resps):
            verdicts, why = (None, r.error) if r.error else parse_verdicts(r.text or "", len(p.shown))
            probs, pwhy = None, None
            if verdicts is None:
                n_failed += 1
                failures += [{"example_id": s.example_id, "reason": why, "reply": r.text} for s in p.shown]
            if self.logprobs and not fallback and not r.error:
                if verdicts is None:  # an unparsed answer contributes no score either
                    pwhy = "the answer could not be parsed"
                elif len(p.shown) == 1:
                    p1, pwhy = first_token_probability(r.top_logprobs or ())
                    probs = None if p1 is None else [p1]
                else:
                    probs, pwhy = list_probabilities(r.top_logprobs or (), verdicts)
                if probs is None:
                    score_failures += [{"example_id": s.example_id, "reason": pwhy} for s in p.shown]
            elif self.logprobs and not fallback:
                score_failures += [{"example_id": s.example_id, "reason": r.error} for s in p.shown]
            for j, s in enumerate(p.shown):
                scored.append(ScoredExample(latent, s.example_id, s.text, s.label, s.quantile,
                                            score=None if probs is None else probs[j],
                                            prediction=None if verdicts is None else verdicts[j]))
        use = usage(self, resps, len(prompts), failures, failed_prompts=n_failed)
        if self.logprobs:
            use["score_failures"] = score_failures
            if fallback:
                use["auroc_unavailable"] = ("logprobs were requested but the endpoint served none "
                                              "(logprobs_fallback): no P(1) scores, AUROC is NaN")
        m = latent_metrics(latent, [e.label for e in scored], predictions=[e.prediction for e in scored],
                           scores=[e.score for e in scored] if self.logprobs and not fallback else None,
                           quantiles=[e.quantile for e in scored])
        return ScorerResult(latent, self.name, explanation, tuple(scored), m, usage=use)


__all__ = ["DetectionScorer", "JudgePrompt", "Shown", "parse_verdicts", "list_probabilities",
           "first_token_probability", "scoring_examples"]
