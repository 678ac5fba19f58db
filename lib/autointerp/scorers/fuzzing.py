"""Fuzzing scorer (METHODS §4): detection with << >> marks whose placement the judge checks.

Activating examples mark their true active tokens (>= ``threshold`` x the example's max,
neighbours merged by ``explain.highlight``). ``mode="default"``: the non-activating examples get
as many random tokens marked as a paired activating example (cycled in order). ``mode="active"``:
the given non-activating examples are not used; each activating example is shown a second time
with the same number of marks placed on inactive tokens (label 0). Prompts, parsing and metrics
are the detection scorer's (``detection.DetectionScorer``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..explain import highlight
from .detection import DetectionScorer, Shown, _Item

FUZZ_MODES = ("default", "active")


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


__all__ = ["FuzzingScorer", "FUZZ_MODES"]
