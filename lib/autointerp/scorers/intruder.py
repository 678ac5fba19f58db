"""Intruder scorers (METHODS §4, explanation-free): spot the one non-activating window among
activating windows of one latent.

- ``build_trials``: per latent ``n_trials`` trials of ``n_activating`` activating windows (drawn
  without replacement inside a trial, spread over quantile bins, least-used first across trials)
  plus one non-activating window, the intruder, at a random position; all seeded by
  ``[seed, latent, control]``. ``control=True`` (the "mixed" control): the activating windows come
  from ``n_activating`` different *other* latents, one each, so nothing is shared and the
  expected accuracy is chance, ``1 / (n_activating + 1)``.
- ``IntruderScorer``: an LLM judge sees the decoded windows (no highlights) and answers the odd
  one's number. Strict parse: the first integer in the reply, which must lie in 1..N, else the
  trial fails (reason recorded), never a guess. ``logprobs=True``: ``p_correct`` = P(correct
  number) / sum of P(1..N) over the alternatives served for the token where the answer begins.
- ``EmbeddingIntruder``: no LLM; MiniLM embeddings (``scorers.embedding``), the guess is the
  window with the lowest mean cosine to the others; ``p_correct`` is 1 or 0.

Both follow the scorer contract (``scorers.base``): ``score(explanations, examples)`` judges the
real trials and ``score_control(explanations, examples, seed=...)`` the mixed-control trials, each
returning one ``records.ScorerResult`` per latent; ``explanations`` is ignored (None is fine) and
the latents are those of ``examples`` (``records.Window`` lists), sorted. Run both and compare with
``base.run_with_control(scorer, None, examples, seed=seed, metric="accuracy")``. Per result:
``metrics.accuracy`` over the answered trials (NaN if all failed), ``metrics.n_failed`` the failed
trials, ``details`` = chance, n_trials, mean_p_correct; one ``ScoredExample`` per trial
(``prediction`` 1/0 = right/wrong, None = failed; ``score`` = p_correct; ``details`` = the trial's
ids, sources, texts, intruder, guess, reply, reason).
Positions (``intruder``, ``guess``) are 0-based; the prompt numbers excerpts from 1.
Every scorer sends the trials of one call in one ``LLMClient.run`` / one embedding pass.
"""
from __future__ import annotations

import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..llm import ChatRequest, ChatResponse, LLMClient
from ..metrics import NAN, LatentMetrics
from ..records import ScoredExample, ScorerResult, Window
from .base import check_windows
from .judge import CORE, Decode, digest, need_decode, render, settings_of, token_at, token_text

MIXED = "mixed"
_NUM_RE = re.compile(r"\d+(?:\.\d+)?")


def window_text(e: Window, decode: Decode | None) -> str:
    """A window as shown: its tokens decoded one by one and joined (newlines escaped), no marks."""
    return token_text(e, need_decode("intruder", decode))[1]


@dataclass(frozen=True)
class Trial:
    """One intruder trial: the windows in display order and where the intruder sits."""

    latent: int
    index: int
    shown: tuple[Window, ...]
    sources: tuple[int, ...]  # the latent each shown window was drawn for
    intruder: int  # 0-based position of the non-activating window
    control: bool = False
    seed: int = 0

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(e.id for e in self.shown)


def _pick(rng: np.random.Generator, pool: Sequence[Window], k: int, used: Counter) -> list[int]:
    """k distinct indices of ``pool``, spread over quantile bins: rounds of one window per bin,
    bins whose least-used window is used least first (random tie-break), the least-used window
    of a bin (random tie-break); updates ``used``."""
    quant = [-1 if e.quantile is None else int(e.quantile) for e in pool]
    chosen: list[int] = []
    while len(chosen) < k:
        free = {b: [i for i, q in enumerate(quant) if q == b and i not in chosen] for b in set(quant)}
        rank = {b: (min(used[i] for i in c), r) for (b, c), r in
                zip(sorted(free.items()), rng.permutation(len(free))) if c}
        for b in sorted(rank, key=rank.__getitem__):
            low = rank[b][0]
            chosen.append(int(rng.choice([i for i in free[b] if used[i] == low])))
            if len(chosen) == k:
                break
    used.update(chosen)
    return chosen


def build_trials(examples: Mapping[int, Sequence[Window]], n_trials: int = 5,
                 n_activating: int = 4, seed: int = 0, control: bool = False) -> list[Trial]:
    """``n_trials`` seeded trials per latent (sorted); see the module docstring."""
    check_windows("intruder trials", examples)
    if n_trials < 1 or n_activating < 2:
        raise ValueError(f"Need n_trials >= 1 and n_activating >= 2 (an odd one out needs a "
                         f"shared majority); got n_trials={n_trials}, n_activating={n_activating}.")
    pos: dict[int, list[Window]] = {}
    neg: dict[int, list[Window]] = {}
    for lat, exs in examples.items():
        wrong = [e.id for e in exs if e.latent != lat]
        if wrong:
            raise ValueError(f"Latent {lat}: examples {wrong[:5]} belong to another latent.")
        pos[lat] = [e for e in exs if e.label]
        neg[lat] = [e for e in exs if not e.label]
    latents = sorted(examples)
    out: list[Trial] = []
    for lat in latents:
        if not neg[lat]:
            raise ValueError(f"Latent {lat}: no non-activating example to use as the intruder; "
                             "pass negatives (e.g. detection.scoring_examples(lexs)) or drop it.")
        others = [o for o in latents if o != lat and pos[o]]
        if control and len(others) < n_activating:
            raise ValueError(f"Mixed control for latent {lat}: {len(others)} other latents with "
                             f"activating examples, need n_activating={n_activating}; score more "
                             "latents together or lower n_activating.")
        if not control and len(pos[lat]) < n_activating:
            raise ValueError(f"Latent {lat}: {len(pos[lat])} activating examples, need "
                             f"n_activating={n_activating}; lower n_activating or pass more.")
        rng = np.random.default_rng([seed, lat, int(control)])
        used: dict[int, Counter] = {o: Counter() for o in latents}
        used_neg: Counter = Counter()
        for t in range(n_trials):
            if control:
                srcs = [int(o) for o in rng.choice(others, n_activating, replace=False)]
                acts = [pos[o][_pick(rng, pos[o], 1, used[o])[0]] for o in srcs]
            else:
                srcs = [lat] * n_activating
                acts = [pos[lat][i] for i in _pick(rng, pos[lat], n_activating, used[lat])]
            order = rng.permutation(n_activating)
            acts, srcs = [acts[i] for i in order], [srcs[i] for i in order]
            intruder = neg[lat][_pick(rng, neg[lat], 1, used_neg)[0]]
            at = int(rng.integers(n_activating + 1))
            out.append(Trial(lat, t, tuple(acts[:at] + [intruder] + acts[at:]),
                             tuple(srcs[:at] + [lat] + srcs[at:]), at, control, seed))
    return out


def trial_example(t: Trial, texts: Sequence[str], guess: int | None, p_correct: float | None = None,
                  reply: str | None = None, reason: str | None = None) -> ScoredExample:
    """One judged trial as a ``ScoredExample``: ``prediction`` 1/0 when answered right/wrong,
    None when the trial failed; ``score`` = p_correct (None without one)."""
    return ScoredExample(
        latent=t.latent, example_id=t.index, text="\n".join(texts), label=True, quantile=None,
        score=p_correct, prediction=None if guess is None else int(guess == t.intruder),
        details={"ids": t.ids, "sources": t.sources, "texts": tuple(texts), "intruder": t.intruder,
                 "guess": guess, "reply": reply, "reason": reason})


def trial_metrics(latent: int, scored: Sequence[ScoredExample]) -> LatentMetrics:
    """``accuracy`` over the answered trials (NaN if all failed), ``n_failed`` the failed ones;
    the binary and AUROC fields are NaN (every trial is a positive: nothing to separate)."""
    ok = [e.prediction for e in scored if e.prediction is not None]
    return LatentMetrics(latent=latent, n_pos=len(scored), n_neg=0, n_failed=len(scored) - len(ok),
                         balanced_accuracy=NAN, precision=NAN, recall=NAN, f1=NAN, auroc=NAN,
                         accuracy=float(np.mean(ok)) if ok else NAN)


def _results(name: str, trials: Sequence[Trial], judged: Sequence[ScoredExample],
             usage: Callable[[Sequence[int]], dict[str, Any]]) -> list[ScorerResult]:
    """Group judged trials by (control, latent); ``usage(indices)`` gives each group's usage."""
    groups: dict[tuple[bool, int], list[int]] = {}
    for i, t in enumerate(trials):
        groups.setdefault((t.control, t.latent), []).append(i)
    out = []
    for (control, lat), idx in sorted(groups.items()):
        rs = tuple(judged[i] for i in idx)
        ps = [r.score for r in rs if r.score is not None]
        out.append(ScorerResult(
            latent=lat, scorer=name, explanation="", examples=rs, metrics=trial_metrics(lat, rs),
            control=MIXED if control else None,
            usage={**usage(idx), "trial_seed": trials[idx[0]].seed},
            details={"chance": 1.0 / len(trials[idx[0]].shown), "n_trials": len(rs),
                     "mean_p_correct": float(np.mean(ps)) if ps else NAN}))
    return out


def parse_choice(reply: str, n: int) -> tuple[int | None, str | None]:
    """(0-based position, None) from the first integer in the reply, which must be in 1..n;
    else (None, why it failed)."""
    m = _NUM_RE.search(reply)
    if not m:
        return None, f"no number in the reply {reply[:80]!r}"
    if "." in m.group():
        return None, f"{m.group()} is not an integer"
    v = int(m.group())
    if not 1 <= v <= n:
        return None, f"number {v} is outside 1..{n}"
    return v - 1, None


def choice_probability(top: Sequence[Sequence[tuple[str, float]]], reply: str, n: int,
                       correct: int) -> tuple[float | None, str | None]:
    """P(correct number)/sum P(1..n) over the alternatives of the token where the answer begins."""
    m = _NUM_RE.search(reply)
    idx = token_at(top, reply, [m.start()]) if m and top else None
    if idx is None:
        return None, "the logprobs' tokens do not spell the reply"
    alts = top[idx[0]]
    if alts[0][0].strip(CORE) != m.group():
        return None, f"the answer's token {alts[0][0]!r} does not read as {m.group()}"
    p: Counter = Counter()
    for tok, lp in dict(alts).items():
        s = tok.strip(CORE)
        if s.isascii() and s.isdigit() and 1 <= int(s) <= n:
            p[int(s)] += math.exp(lp)
    return p[correct + 1] / sum(p.values()), None


class _TrialScorer:
    """The contract for both intruder scorers (fields n_trials, n_activating, seed, name)."""

    def trials(self, examples: Mapping[int, Sequence[Window]], control: bool = False) -> list[Trial]:
        """This scorer's trials (real, or the mixed control), seeded by its own ``seed``."""
        return build_trials(examples, self.n_trials, self.n_activating, self.seed, control)

    def score(self, explanations: Mapping[int, str] | None,
              examples: Mapping[int, Sequence[Window]]) -> list[ScorerResult]:
        """Judge the real trials of every latent of ``examples``; ``explanations`` is unused."""
        return self.score_trials(self.trials(examples))

    def score_control(self, explanations: Mapping[int, str] | None,
                      examples: Mapping[int, Sequence[Window]], *, seed: int = 0) -> list[ScorerResult]:
        """Judge the mixed-control trials (``control="mixed"``). The trials use the scorer's own
        ``seed``, as the real ones do; ``seed`` (the run's bootstrap seed) is not used here."""
        return self.score_trials(self.trials(examples, control=True))

    def score_trials(self, trials: Sequence[Trial]) -> list[ScorerResult]:
        raise NotImplementedError


@dataclass(frozen=True)
class IntruderScorer(_TrialScorer):
    """LLM intruder judge; ``decode`` turns token ids into text."""

    client: LLMClient = field(repr=False)
    decode: Decode | None = field(default=None, repr=False)
    n_trials: int = 5
    n_activating: int = 4
    logprobs: bool = False
    top_logprobs: int = 5
    max_tokens: int | None = None  # None: 8
    temperature: float = 0.0
    seed: int = 0
    name: str = "intruder"

    def __post_init__(self) -> None:
        if self.logprobs and not 2 <= self.top_logprobs <= 20:
            raise ValueError(f"logprobs=True needs top_logprobs in 2..20, got {self.top_logprobs}.")

    def system_prompt(self) -> str:
        return ("You are an interpretability researcher studying one feature of a language model. "
                "You get numbered text excerpts. All but one of these excerpts share something a "
                "language-model feature responds to. Which excerpt is the odd one out? Answer with "
                "its number only.")

    def _user(self, texts: Sequence[str]) -> str:
        lines = "\n".join(f"Excerpt {i + 1}: {t}" for i, t in enumerate(texts))
        return (f"{lines}\n\nWhich excerpt is the odd one out? Answer with its number "
                f"(1-{len(texts)}) only.")

    @property
    def settings(self) -> dict[str, Any]:
        return settings_of(self)

    @property
    def prompt_hash(self) -> str:
        """sha256 (16 hex) of the prompt template and every setting."""
        return digest({"system": self.system_prompt(), "settings": self.settings,
                       "user": self._user(["<excerpt>"])})

    def render_prompt(self, trial: Trial) -> str:
        """One trial's prompt exactly as sent, each message under a role header."""
        return render((("system", self.system_prompt()),
                       ("user", self._user([window_text(e, self.decode) for e in trial.shown]))))

    def score_trials(self, trials: Sequence[Trial]) -> list[ScorerResult]:
        """Judge the trials (any latents, real and control mixed) in one ``client.run`` call."""
        texts = [tuple(window_text(e, self.decode) for e in t.shown) for t in trials]
        reqs = [ChatRequest((("system", self.system_prompt()), ("user", self._user(tx))),
                            self.max_tokens or 8, self.temperature, logprobs=self.logprobs,
                            top_logprobs=self.top_logprobs if self.logprobs else 0,
                            seed=self.seed, tag=self.name) for tx in texts]
        resps = self.client.run(reqs, desc=self.name)
        fallback = {(t.control, t.latent) for t, r in zip(trials, resps) if r.logprobs_fallback}
        judged = [self._judge(t, tx, r, (t.control, t.latent) not in fallback)
                  for t, tx, r in zip(trials, texts, resps)]

        def usage(idx: Sequence[int]) -> dict[str, Any]:
            rs: list[ChatResponse] = [resps[i] for i in idx]
            u = {"model": self.client.endpoint.model, "prompt_hash": self.prompt_hash,
                 "settings": self.settings, "n_prompts": len(rs),
                 "prompt_tokens": sum(r.prompt_tokens for r in rs),
                 "completion_tokens": sum(r.completion_tokens for r in rs),
                 "cached": sum(r.cached for r in rs)}
            if self.logprobs and any(r.logprobs_fallback for r in rs):
                u["p_unavailable"] = ("logprobs were requested but the endpoint served none "
                                      "(logprobs_fallback): no p_correct for this latent")
            return u

        return _results(self.name, trials, judged, usage)

    def _judge(self, t: Trial, texts: tuple[str, ...], r: ChatResponse, use_p: bool) -> ScoredExample:
        guess, why = (None, r.error) if r.error else parse_choice(r.text or "", len(t.shown))
        p = None
        if guess is not None and self.logprobs and use_p:
            p, pwhy = choice_probability(r.top_logprobs or (), r.text or "", len(t.shown), t.intruder)
            why = why or pwhy
        return trial_example(t, texts, guess, p, r.text, why)


@dataclass(frozen=True)
class EmbeddingIntruder(_TrialScorer):
    """Intruder by MiniLM embeddings: the guess is the window least similar to the others."""

    decode: Decode | None = field(default=None, repr=False)
    n_trials: int = 5
    n_activating: int = 4
    seed: int = 0
    batch_size: int = 64
    device: str = "cpu"
    name: str = "intruder_embedding"

    @property
    def settings(self) -> dict[str, Any]:
        return settings_of(self, exclude=("decode",))

    def score_trials(self, trials: Sequence[Trial]) -> list[ScorerResult]:
        """Embed every distinct window once, then guess each trial's intruder."""
        from .embedding import MODEL_NAME, embed

        texts = [tuple(window_text(e, self.decode) for e in t.shown) for t in trials]
        uniq = sorted({x for tx in texts for x in tx})
        t0 = time.perf_counter()
        vec = dict(zip(uniq, embed(uniq, batch_size=self.batch_size, device=self.device)))
        seconds = round(time.perf_counter() - t0, 3)
        judged = []
        for t, tx in zip(trials, texts):
            v = np.stack([vec[x] for x in tx])
            sim = v @ v.T
            guess = int(np.argmin(sim.sum(1) - np.diag(sim)))  # lowest mean cosine to the others
            judged.append(trial_example(t, tx, guess, float(guess == t.intruder)))
        settings = self.settings
        return _results(self.name, trials, judged, lambda idx: {
            "model": MODEL_NAME, "device": self.device, "settings": settings,
            "n_texts_embedded": len(uniq), "seconds": seconds})


__all__ = ["Trial", "IntruderScorer", "EmbeddingIntruder", "build_trials",
           "trial_example", "trial_metrics", "parse_choice", "choice_probability", "window_text",
           "MIXED"]
