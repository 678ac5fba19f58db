"""The records that flow between stages, one per kind of thing.

- ``Window``: a window of tokens of one row (token ids, one latent's activation per token, its
  label and quantile, and where it came from).
- ``LatentExamples``: one latent's windows: explanation set, test set, negatives.
- ``Explanation``: one explainer's text for one latent (or why it failed).
- ``ScoredExample``: one window (or prompt, or trial) after a scorer looked at it.
- ``ScorerResult``: one latent scored by one scorer under one condition (the real explanation
  or a control), with its per-latent ``metrics.LatentMetrics``.
All are small frozen dataclasses; ``results.write`` turns them into JSONL lines.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .metrics import LatentMetrics

ACTIVATING = "activating"
WINDOW_KINDS = (ACTIVATING, "random", "hard_negative")


def activation_levels(acts: np.ndarray, latent_max: float) -> np.ndarray:
    """Integer 0-10 levels: round(10 * a / latent_max), clipped."""
    if latent_max <= 0:
        return np.zeros(np.shape(acts), np.int64)
    return np.clip(np.rint(10.0 * np.asarray(acts, np.float64) / latent_max), 0, 10).astype(np.int64)


@dataclass(frozen=True)
class Window:
    """One window of one row, with the target latent's activation on each token.

    ``kind``: "activating" (label True), "random" (a window where the latent never fires) or
    "hard_negative" (a neighbour latent fires, the target is silent). ``source`` says where the
    row came from: "cache" (the run's cache; ``row`` indexes its tokens) or "planted" (the
    planted-latent control's corpus rows)."""

    latent: int
    row: int
    start: int  # position of the first token in the row
    token_ids: tuple[int, ...]
    acts: tuple[float, ...]  # the target latent's activation (all 0 for negatives)
    max_act: float
    quantile: int | None  # rank bin (0 = top); None for negatives
    kind: str  # "activating" | "random" | "hard_negative"
    neighbour: int | None = None  # hard negatives: the neighbour latent that fires here
    neighbour_act: float | None = None  # ... and its max in this window
    source: str = "cache"

    @property
    def id(self) -> str:
        """Stable id inside one source: ``"row:start"``."""
        return f"{self.row}:{self.start}"

    @property
    def label(self) -> bool:
        """True for an activating window."""
        return self.kind == ACTIVATING

    @property
    def peak(self) -> int:
        """Index (inside the window) of the strongest token."""
        return int(np.argmax(self.acts))

    def levels(self, latent_max: float) -> tuple[int, ...]:
        """Activation per token as shown to an LLM: round(10 * a / latent max), 0-10."""
        return tuple(int(v) for v in activation_levels(np.asarray(self.acts), latent_max))


def window_text(window: Window, tokenizer) -> str:
    """A window as plain text: its token ids decoded together, special tokens dropped."""
    return tokenizer.decode(list(window.token_ids), skip_special_tokens=True)


@dataclass(frozen=True)
class LatentExamples:
    """Everything the explainers and scorers of one latent need."""

    latent: int
    max_act: float  # the latent's max over the cache (the scale of the 0-10 levels)
    n_windows: int  # activating windows in the cache
    train: tuple[Window, ...] = ()
    test_activating: tuple[Window, ...] = ()
    test_negative: tuple[Window, ...] = ()  # random windows where the latent is silent
    test_hard_negative: tuple[Window, ...] = ()  # neighbours fire, target silent
    train_negative: tuple[Window, ...] = ()  # hard negatives for contrastive explainers
    neighbours: tuple[int, ...] = ()
    skipped_reason: str | None = None

    @property
    def skipped(self) -> bool:
        return self.skipped_reason is not None


@dataclass(frozen=True)
class Explanation:
    """One explanation of one latent by one explainer (one sample of best-of-k)."""

    latent: int
    explainer: str
    text: str | None  # None when the explainer failed
    failed: bool = False
    error: str | None = None
    sample: int = 0  # index among best-of-k samples; sample 0 is "the first"
    n_samples: int = 1
    random_pick: bool = False  # the seeded random pick among the k samples
    model: str | None = None
    prompt_hash: str | None = None
    raw: str | None = None  # the LLM's full reply
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached: bool = False
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScoredExample:
    """One example after scoring: ``score`` (continuous, higher = more like the explanation)
    and/or ``prediction`` (0/1); None where the scorer gives none or failed on it. ``details``
    holds what only one scorer has (a trial's layout, clean and steered continuations, ...)."""

    latent: int
    example_id: str | int
    text: str
    label: bool
    quantile: int | None
    score: float | None = None
    prediction: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ScorerResult:
    """One latent scored by one scorer under one condition. ``control`` is None for the real
    explanation, else the control's name ("shuffled", "mixed", "random_sae", ...). ``usage``:
    model, tokens, timings, settings; ``details``: per-latent facts only one scorer has."""

    latent: int
    scorer: str
    explanation: str
    examples: tuple[ScoredExample, ...]
    metrics: LatentMetrics
    control: str | None = None
    usage: dict[str, Any] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)


# -- reading records back -------------------------------------------------------------------------
def window_from(d: Mapping[str, Any]) -> Window:
    return Window(**{**d, "token_ids": tuple(d["token_ids"]), "acts": tuple(d["acts"])})


def latent_examples_from(d: Mapping[str, Any]) -> LatentExamples:
    sets = {f: tuple(window_from(e) for e in d[f]) for f in
            ("train", "test_activating", "test_negative", "test_hard_negative", "train_negative")}
    return LatentExamples(**{**d, **sets, "neighbours": tuple(d["neighbours"])})


def explanations_from(rows: Iterable[Mapping[str, Any]]) -> list[Explanation]:
    """Explanation records from ``explanations.jsonl`` lines (one line per latent)."""
    return [Explanation(**e) for row in rows for e in row["explanations"]]


# -- the cache's records (``cache``) ---------------------------------------------------------------
@dataclass(frozen=True)
class CacheManifest:
    model: str
    hook: str
    sae_id: str
    sae_hash: str
    d_sae: int
    ctx_len: int
    n_rows: int
    shard_rows: int
    corpus_hash: str
    first_pos: int = 1  # positions before this (BOS) are not cached

    @property
    def n_cached_tokens(self) -> int:
        return self.n_rows * (self.ctx_len - self.first_pos)

    @property
    def n_shards(self) -> int:
        return -(-self.n_rows // self.shard_rows)


@dataclass(frozen=True)
class LatentStats:
    """Per-latent summary of a finished cache (arrays of length d_sae)."""

    count: np.ndarray  # tokens on which the latent fires
    max_act: np.ndarray
    mean_act: np.ndarray  # mean over the tokens where it fires
    top_token_share: np.ndarray  # share of its top activations that land on its most common token
    n_tokens: int

    @property
    def firing_rate(self) -> np.ndarray:
        return self.count / self.n_tokens

    @property
    def dead(self) -> np.ndarray:
        return self.count == 0

    def single_token(self, share: float = 0.8) -> np.ndarray:
        """Latents whose top activations mostly sit on one token id."""
        return (self.top_token_share >= share) & ~self.dead

    def summary(self) -> dict[str, float]:
        alive = ~self.dead
        return {"n_latents": int(self.count.size), "n_tokens": self.n_tokens,
                "frac_alive": float(alive.mean()),
                "frac_firing_gt_1pct": float((self.firing_rate > 0.01).mean()),
                "frac_firing_gt_10pct": float((self.firing_rate > 0.10).mean()),
                "frac_single_token": float(self.single_token().mean()),
                "mean_l0": float(self.count.sum() / self.n_tokens)}


__all__ = ["ACTIVATING", "WINDOW_KINDS", "activation_levels", "Window", "window_text",
           "LatentExamples", "Explanation", "ScoredExample", "ScorerResult", "window_from",
           "latent_examples_from", "explanations_from",
           "CacheManifest", "LatentStats"]
