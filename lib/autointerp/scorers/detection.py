"""Detection and fuzzing scorers (METHODS §4): an LLM judge answers 0/1 per example.

- ``DetectionScorer``: n examples per prompt (default 5), a seeded shuffled mix of activating and
  non-activating, no highlights, plus the explanation; the judge answers a list ``[1, 0, ...]``.
- ``FuzzingScorer``: the same with << >> highlights. Activating examples mark their true active
  tokens (>= ``threshold`` x the example's max, neighbours merged by ``explain.highlight``).
  ``mode="default"``: the non-activating examples get as many random tokens marked as a paired
  activating example (cycled in order). ``mode="active"``: the given non-activating examples are
  not used; each activating example is shown a second time with the same number of marks placed
  on inactive tokens (label 0). The judge says whether the marks fit the explanation.

Inputs: ``examples`` maps latent -> ``examples.Example`` records (label = ``kind ==
"activating"``, id ``"row:start"``, text decoded by ``decode``, e.g. ``examples.TokenDecoder``).
Detection also takes text-only ``ExampleText`` records; fuzzing needs token ids and activations,
so it refuses them. ``scoring_examples(lexs)`` gives the test sets of ``LatentExamples`` in this form.

Answers are parsed strictly: no list, a non-0/1 entry or a wrong length fails every example of
that prompt (prediction None; the reason is in ``usage["failures"]``), never a guess.
``logprobs=True`` also scores each example as P(1)/(P(0)+P(1)) (an answer outside the served
top-k counts as probability 0): with ``n_per_prompt=1`` (one example per prompt, the judge asked
for one digit) at the first generated token, whatever the rest of the reply; with n > 1 at each
position of a parsed list. If any response came back without logprobs (``logprobs_fallback``)
the latent gets no scores and ``usage["auroc_unavailable"]`` says why: AUROC is NaN, never
substituted. Scores that cannot be read are listed in ``usage["score_failures"]``.
All prompts of all latents go out in one ``LLMClient.run`` call.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from ..examples import Example, LatentExamples
from ..explain import highlight
from ..llm import ChatRequest, ChatResponse, LLMClient
from ..metrics import latent_metrics
from . import ExampleText, ScoredExample, ScorerResult, check_inputs

Decode = Callable[[Iterable[int]], list[str]]
FUZZ_MODES = ("default", "active")
_LIST_RE = re.compile(r"\[([^\[\]]*)\]")
_CORE = " \t\n[],."


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


def scoring_examples(lexs: Sequence[LatentExamples], *, hard_negatives: bool = False) -> dict[int, list[Example]]:
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
    found = _LIST_RE.findall(reply)
    if not found:
        return None, f"no [..] list in the reply {reply[:80]!r}"
    parts = [p.strip() for p in found[-1].split(",")]
    if any(p not in ("0", "1") for p in parts):
        return None, f"the list [{found[-1][:60]}] holds something other than 0/1"
    if len(parts) != n:
        return None, f"{len(parts)} answers for {n} examples"
    return [int(p) for p in parts], None


def _p_one(alts: Sequence[tuple[str, float]]) -> float | None:
    """P(1)/(P(0)+P(1)) over one position's served alternatives; None if neither is served."""
    p = {"0": 0.0, "1": 0.0}
    for tok, lp in dict(alts).items():  # dict: the sampled token is listed twice
        if tok.strip(_CORE) in p:
            p[tok.strip(_CORE)] += math.exp(lp)
    return p["1"] / (p["0"] + p["1"]) if p["0"] + p["1"] > 0 else None


def first_token_probability(top: Sequence[Sequence[tuple[str, float]]]) -> tuple[float | None, str | None]:
    """One example per prompt: P(1)/(P(0)+P(1)) at the first generated token (tokens reading 0
    or 1 once brackets and spaces are stripped count), whatever the rest of the reply says."""
    p = _p_one(top[0]) if top else None
    return (p, None) if p is not None else (None, "neither '0' nor '1' among the first token's top logprobs")


def list_probabilities(top: Sequence[Sequence[tuple[str, float]]], verdicts: Sequence[int]
                       ) -> tuple[list[float] | None, str | None]:
    """P(1)/(P(0)+P(1)) at each list position: the last len(verdicts) generated tokens that read
    0 or 1 (brackets, commas and spaces stripped), checked against the parsed verdicts."""
    pos = [i for i, alts in enumerate(top) if alts and alts[0][0].strip(_CORE) in ("0", "1")]
    pos = pos[-len(verdicts):]
    if len(pos) != len(verdicts) or [int(top[i][0][0].strip(_CORE)) for i in pos] != list(verdicts):
        return None, "the logprobs' tokens do not line up with the parsed answer"
    probs = [_p_one(top[i]) for i in pos]
    return (None, "a list position lacks both '0' and '1' in its top logprobs") if None in probs else (probs, None)


def _digest(payload: Any) -> str:
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class _Item:
    latent: int
    example_id: str | int
    label: bool
    quantile: int | None
    tokens: tuple[str, ...] | None  # None for ExampleText
    text: str
    acts: tuple[float, ...] | None


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

    # -- prompts -----------------------------------------------------------------------------
    def _task(self) -> str:
        return ("Decide for each excerpt whether it contains what the explanation describes: "
                "1 if it does, 0 if it does not.")

    def system_prompt(self, n: int) -> str:
        """Instructions for a prompt of n examples."""
        sample = "[" + ", ".join("1" if i % 3 == 0 else "0" for i in range(n)) + "]"
        answer = ("Answer with a single digit, 1 or 0, and nothing else." if n == 1 else
                  f"Answer with one list of {n} numbers, one per excerpt in order, for example "
                  f"{sample}, and nothing else.")
        return ("You are an interpretability researcher studying one feature of a language model. "
                "You get an explanation of what the feature responds to and numbered text "
                f"excerpts. {self._task()} {answer}")

    @property
    def settings(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("client", "decode")}
        return {**d, "highlights": self.highlights}

    @property
    def prompt_hash(self) -> str:
        """sha256 (16 hex) of the prompt template and every setting."""
        return _digest({"system": self.system_prompt(self.n_per_prompt), "settings": self.settings,
                        "user": self._user("<explanation>", ["<example>"])})

    def _user(self, explanation: str, texts: Sequence[str]) -> str:
        lines = "\n".join(f"Example {i + 1}: {t}" for i, t in enumerate(texts))
        ask = "Answer with 1 or 0." if len(texts) == 1 else f"Answer with a list of {len(texts)} numbers (0 or 1)."
        return f"Explanation: {explanation}\n\n{lines}\n\n{ask}"

    def _items(self, latent: int, exs: Sequence[Example | ExampleText]) -> list[_Item]:
        out = []
        for e in exs:
            if isinstance(e, Example):
                if self.decode is None:
                    raise ValueError(f"{self.name}: Example records need decode= (e.g. "
                                     "examples.TokenDecoder(tokenizer)) to turn token ids into text.")
                toks = tuple(self.decode(e.token_ids))
                out.append(_Item(e.latent, f"{e.row}:{e.start}", e.kind == "activating",
                                 e.quantile, toks, highlight(toks, [False] * len(toks)), e.acts))
            elif isinstance(e, ExampleText):
                if self.highlights:
                    raise TypeError(f"{self.name} needs examples.Example records (token ids and "
                                    "activations) to place highlights; got ExampleText.")
                out.append(_Item(e.latent, e.example_id, bool(e.label), e.quantile, None,
                                 e.text.replace("\r", "").replace("\n", "\\n"), None))
            else:
                raise TypeError(f"{self.name}: examples must be examples.Example or ExampleText, "
                                f"got {type(e).__name__}.")
        return out

    def _shown(self, latent: int, items: Sequence[_Item]) -> list[Shown]:
        return [Shown(latent, it.example_id, it.label, it.quantile, it.text) for it in items]

    def prompts(self, latent: int, explanation: str,
                examples: Sequence[Example | ExampleText]) -> list[JudgePrompt]:
        """One latent's prompts: its examples shuffled (seeded by ``[seed, latent]``) in groups."""
        shown = self._shown(latent, self._items(latent, examples))
        order = np.random.default_rng([self.seed, latent]).permutation(len(shown))
        shown = [shown[i] for i in order]
        n = self.n_per_prompt
        return [JudgePrompt(latent, (("system", self.system_prompt(len(g))),
                                     ("user", self._user(explanation, [s.text for s in g]))),
                            tuple(g))
                for g in (shown[i:i + n] for i in range(0, len(shown), n))]

    def render_prompt(self, explanation: str, examples: Sequence[Example | ExampleText],
                      index: int = 0) -> str:
        """Prompt ``index`` of a latent exactly as sent, each message under a role header."""
        latent = examples[0].latent
        p = self.prompts(latent, explanation, examples)[index]
        return "\n\n".join(f"=== {role} ===\n{content}" for role, content in p.messages)

    def _request(self, p: JudgePrompt) -> ChatRequest:
        return ChatRequest(p.messages, self.max_tokens or 3 * len(p.shown) + 8, self.temperature,
                           logprobs=self.logprobs, top_logprobs=self.top_logprobs if self.logprobs else 0,
                           seed=self.seed, tag=self.name)

    # -- scoring -----------------------------------------------------------------------------
    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[Example | ExampleText]]) -> list[ScorerResult]:
        """Score each latent of ``explanations``; one ``client.run`` call for all prompts."""
        latents = check_inputs(explanations, {k: self._items(k, v) for k, v in examples.items()
                                              if k in explanations})
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
                if len(p.shown) == 1:
                    p1, pwhy = first_token_probability(r.top_logprobs or ())
                    probs = None if p1 is None else [p1]
                elif verdicts is not None:
                    probs, pwhy = list_probabilities(r.top_logprobs or (), verdicts)
                else:
                    pwhy = "the answer could not be parsed"
                if probs is None:
                    score_failures += [{"example_id": s.example_id, "reason": pwhy} for s in p.shown]
            elif self.logprobs and not fallback:
                score_failures += [{"example_id": s.example_id, "reason": r.error} for s in p.shown]
            for j, s in enumerate(p.shown):
                scored.append(ScoredExample(latent, s.example_id, s.text, s.label, s.quantile,
                                            score=None if probs is None else probs[j],
                                            prediction=None if verdicts is None else verdicts[j]))
        usage: dict[str, Any] = {
            "model": self.client.endpoint.model, "prompt_hash": self.prompt_hash,
            "settings": self.settings, "n_prompts": len(prompts),
            "prompt_tokens": sum(r.prompt_tokens for r in resps),
            "completion_tokens": sum(r.completion_tokens for r in resps),
            "cached": sum(r.cached for r in resps),
            "failed_prompts": n_failed,
            "failures": failures}
        if self.logprobs:
            usage["score_failures"] = score_failures
            if fallback:
                usage["auroc_unavailable"] = ("logprobs were requested but the endpoint served none "
                                              "(logprobs_fallback): no P(1) scores, AUROC is NaN")
        m = latent_metrics(latent, [e.label for e in scored], predictions=[e.prediction for e in scored],
                           scores=[e.score for e in scored] if self.logprobs and not fallback else None,
                           quantiles=[e.quantile for e in scored])
        return ScorerResult(latent, self.name, explanation, tuple(scored), m, usage=usage)


@dataclass(frozen=True)
class FuzzingScorer(DetectionScorer):
    """LLM fuzzing scorer: like detection, with << >> marks whose placement the judge checks."""

    mode: str = "default"  # "default" | "active"
    threshold: float = 0.3
    name: str = "fuzzing"

    highlights: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in FUZZ_MODES:
            raise ValueError(f"mode={self.mode!r}: choose one of {FUZZ_MODES}.")

    def _task(self) -> str:
        return ("In each excerpt some tokens are marked <<like this>>. Decide for each excerpt "
                "whether the marked tokens are what the explanation describes: 1 if the marks sit "
                "on what the explanation describes, 0 if they do not.")

    def active_mask(self, acts: Sequence[float]) -> np.ndarray:
        """True active tokens: > 0 and >= threshold x the example's max."""
        a = np.asarray(acts, np.float64)
        return (a > 0) & (a >= self.threshold * (a.max() if a.size else 0.0))

    def _mark(self, it: _Item, marked: Sequence[int], label: bool, suffix: str = "") -> Shown:
        mask = [False] * len(it.tokens)
        for k in marked:
            mask[k] = True
        return Shown(it.latent, f"{it.example_id}{suffix}", label, it.quantile if label else None,
                     highlight(it.tokens, mask), tuple(sorted(int(k) for k in marked)))

    def _shown(self, latent: int, items: Sequence[_Item]) -> list[Shown]:
        rng = np.random.default_rng([self.seed, latent, 1])
        pos = [it for it in items if it.label]
        masks = [self.active_mask(it.acts) for it in pos]
        out = [self._mark(it, np.flatnonzero(m), True) for it, m in zip(pos, masks)]
        if self.mode == "active":
            for it, m in zip(pos, masks):
                free = np.flatnonzero(~m)
                k = min(int(m.sum()), free.size)
                if k:
                    out.append(self._mark(it, rng.choice(free, k, replace=False), False, ":wrong"))
            return out
        counts = [int(m.sum()) for m in masks] or [1]
        for j, it in enumerate(x for x in items if not x.label):
            k = min(counts[j % len(counts)], len(it.tokens))
            out.append(self._mark(it, rng.choice(len(it.tokens), k, replace=False), False))
        return out


def render_prompt(scorer: DetectionScorer, explanation: str,
                  examples: Sequence[Example | ExampleText], index: int = 0) -> str:
    """Prompt ``index`` of one latent exactly as ``scorer`` sends it (for the notebook)."""
    return scorer.render_prompt(explanation, examples, index)


__all__ = ["DetectionScorer", "FuzzingScorer", "JudgePrompt", "Shown", "FUZZ_MODES",
           "parse_verdicts", "list_probabilities", "first_token_probability", "render_prompt", "scoring_examples"]
