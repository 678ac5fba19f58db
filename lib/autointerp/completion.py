"""The completion-mode explainer, for small and base models (METHODS §3).

A chat prompt asks a weak model to follow instructions and an answer format; a 135M model mostly
does not. A plain *completion* prompt asks it only to continue a text whose pattern it has seen
twice: two worked lists of marked excerpts, each followed by ``Common theme: "..."``, then the
latent's own excerpts and ``Common theme: "``. The model's continuation up to the closing quote is
the explanation. It is sent to the endpoint's ``/v1/completions`` (the embedded llama.cpp server
serves it; so do vLLM and OpenAI's legacy models), never through a chat template.

What a completion yields is checked like any explanation: empty, runaway (too many words), a
repeated word ("cookie, cookie, cookie"), a worked example's theme copied, or words copied from
the prompt's frame are failures with a reason (``explain.FAILURES`` kinds), never a text that scores.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from . import results
from .explain import _norm, _opens_with_prompt, _spread, format_example
from .llm.client import ChatRequest, ChatResponse
from .records import Explanation, LatentExamples

LEAD_IN = 'Common theme: "'
_HEADER = ("Each list below shows short excerpts of text in which one feature of a language model "
           "fires. The tokens where it fires are marked <<like this>>. After each list, one line "
           "names what the marked tokens have in common.\n\n")
# (excerpts as (tokens, 0-10 activations), theme): short themes, as a reader would write them
_WORKED = [
    ([(["The", " ship", " crossed", " the", " Atlantic", " in", " ten", " days", "."], [0, 0, 0, 0, 9, 0, 0, 0, 0]),
      (["We", " swam", " in", " the", " Pacific", " Ocean", " every", " summer", "."], [0, 0, 0, 0, 10, 6, 0, 0, 0]),
      (["Boats", " on", " the", " North", " Sea", " came", " back", " late", "."], [0, 0, 0, 4, 8, 0, 0, 0, 0])],
     "ocean, sea"),
    ([(["def", " read", "(", "self", ",", " size", "=", "-1", "):"], [0, 9, 0, 0, 0, 0, 0, 0, 0]),
      (["Call", " write", "()", " to", " save", " the", " buffer", "."], [0, 8, 0, 0, 0, 0, 0, 0]),
      (["The", " method", " close", "()", " flushes", " first", "."], [0, 0, 7, 0, 0, 0, 0])],
     "names of file methods"),
]
MAX_WORDS = 12


@dataclass(frozen=True)
class CompletionExplainer:
    """Two-shot completion prompt ending in ``Common theme: "``; one line read back, up to the quote."""

    name: str = "completion"
    threshold: float = 0.3  # tokens >= threshold x the example's max are marked
    max_examples: int = 8  # activating excerpts shown, spread over the quantiles
    max_tokens: int = 16
    temperature: float = 0.0
    n_samples: int = 1  # best-of-k: k samples at sample_temperature
    sample_temperature: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}.")
        if self.n_samples > 1 and self.sample_temperature <= 0:
            raise ValueError("n_samples > 1 needs sample_temperature > 0 (else k copies of one answer).")

    @property
    def prompt_hash(self) -> str:
        return results.digest({"template": self.prompt_for([]), "settings": dataclasses.asdict(self)})

    def _block(self, excerpts: Sequence[tuple[Sequence[str], Sequence[float]]], latent_max: float) -> str:
        lines = [f"{i + 1}. {format_example(t, a, latent_max, threshold=self.threshold)}"
                 for i, (t, a) in enumerate(excerpts)]
        return "Excerpts:\n" + "\n".join(lines) + "\n"

    def prompt_for(self, excerpts: Sequence[tuple[Sequence[str], Sequence[float]]], latent_max: float = 10.0) -> str:
        worked = "".join(self._block(ex, 10.0) + f'{LEAD_IN}{theme}"\n\n' for ex, theme in _WORKED)
        return _HEADER + worked + self._block(excerpts, latent_max) + LEAD_IN

    def prompt(self, lex: LatentExamples, decode) -> str:
        shown = _spread(lex.train, self.max_examples)
        return self.prompt_for([(decode(e.token_ids), e.acts) for e in shown], lex.max_act)

    def requests(self, lex: LatentExamples, decode) -> list[ChatRequest]:
        msgs = (("user", self.prompt(lex, decode)),)
        temps = [(self.temperature, self.seed)] if self.n_samples == 1 else [
            (self.sample_temperature, self.seed + i) for i in range(self.n_samples)]
        return [ChatRequest(msgs, self.max_tokens, t, seed=s, tag=self.name, completion=True, stop=('"', "\n"))
                for t, s in temps]

    def parse(self, lex: LatentExamples, responses: Sequence[ChatResponse], model: str, decode) -> list[Explanation]:
        pick = int(np.random.default_rng([self.seed, lex.latent]).integers(len(responses)))
        prompt = self.prompt(lex, decode)
        out = []
        for i, r in enumerate(responses):
            if r.error:
                text, error, kind = None, r.error, "endpoint"
            else:
                text, kind, error = read_theme(r.text or "", prompt)
            out.append(Explanation(
                latent=lex.latent, explainer=self.name, text=text, failed=text is None, error=error,
                sample=i, n_samples=len(responses), random_pick=len(responses) > 1 and i == pick, model=model,
                prompt_hash=self.prompt_hash, raw=r.text, prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, cached=r.cached,
                details={"n_examples": min(self.max_examples, len(lex.train)), **({"failure": kind} if kind else {})}))
        return out


def read_theme(reply: str, prompt: str) -> tuple[str | None, str | None, str | None]:
    """(theme, None, None) from a completion, or (None, failure kind, why)."""
    theme = reply.split('"')[0].splitlines()[0].strip(" \t.,;:'`*") if reply.strip() else ""
    words = _norm(theme).split()
    if not words:
        return None, "placeholder", f"empty completion {reply[:60]!r}"
    if len(words) > MAX_WORDS:
        return None, "cut_off", f"{len(words)} words: a runaway continuation, not a theme"
    items = [_norm(i) for i in re.split(r"[,;/]| and ", theme.lower()) if _norm(i)]
    for units in (items, words if len(words) >= 3 else []):  # "cookie, cookie, ..." or "the the the"
        if len(units) >= 2:
            top, n = Counter(units).most_common(1)[0]
            if n >= max(2, len(units) / 2):
                return None, "echo", f"{theme!r} repeats {top!r}: a loop, not a theme"
    if _norm(theme) in {_norm(t) for _, t in _WORKED}:
        return None, "echo", f"{theme!r} is a worked example's theme"
    if _opens_with_prompt(theme, prompt, n_words=min(5, len(words))) and len(words) >= 3:
        return None, "echo", f"{theme!r} copies the prompt's own words"
    return theme, None, None


__all__ = ["CompletionExplainer", "read_theme", "LEAD_IN", "MAX_WORDS"]
