"""Explainers: from a latent's examples to a short text that says what it responds to.

- ``LLMExplainer()``: the default (METHODS §3): system prompt, two worked examples, then the
  latent's examples with the active tokens (>= ``threshold`` x the example's max, neighbours
  merged) between << >>, optionally followed by (token, 0-10) pairs and preceded by reasoning;
  the answer is read after ``[EXPLANATION]:``. A reply without it is a recorded failure.
- ``LLMExplainer(contrastive=True)``: up to 15 activating and 5 hard-negative examples in two
  labelled sections.
- ``TopTokensExplainer``, ``TopWordsExplainer`` and ``LogitLensExplainer`` need no LLM (``plain_explainers``).
``run_explainers`` sends every LLM prompt of every latent in one ``LLMClient.run`` call. An answer
that is not an explanation (``FAILURES``: a failed request, a reply cut off or out of format, a
placeholder, an echo of the prompt, one or two words) is a recorded failure, never a text that
gets scored. The explanations file and its summaries are ``explanations``.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import results
from .llm import ChatRequest, ChatResponse, LLMClient
from .plain_explainers import (Decode, LogitLensExplainer, TopTokensExplainer, TopWordsExplainer,  # noqa: F401
                               final_norm_scale)  # re-exported: ``explain`` stays the one place to find an explainer
from .records import Explanation, LatentExamples, Window, activation_levels

MARKER = "[EXPLANATION]:"
_MARKER_RE = re.compile(r"\[\s*explanation\s*\]\s*:", re.IGNORECASE)


# -- formatting ----------------------------------------------------------------------------------
def _clean(text: str) -> str:
    return text.replace("\r", "").replace("\n", "\\n")


def highlight(tokens: Sequence[str], active: Sequence[bool]) -> str:
    """Join tokens, wrapping each run of consecutive active tokens in one << >> pair (leading and
    trailing spaces of a run stay outside the marks)."""
    out, i = [], 0
    while i < len(tokens):
        if not active[i]:
            out.append(_clean(tokens[i]))
            i += 1
            continue
        j = i
        while j < len(tokens) and active[j]:
            j += 1
        span = _clean("".join(tokens[i:j]))
        core = span.strip()
        if not core:
            out.append(f"<<{span}>>")
        else:
            lead, tail = span[:len(span) - len(span.lstrip())], span[len(span.rstrip()):]
            out.append(f"{lead}<<{core}>>{tail}")
        i = j
    return "".join(out)


def format_example(tokens: Sequence[str], acts: Sequence[float], latent_max: float, *,
                   threshold: float = 0.3, show_activations: bool = False) -> str:
    """One example as the LLM reads it: highlighted text, optionally "(token, level)" pairs."""
    a = np.asarray(acts, np.float64)
    active = (a > 0) & (a >= threshold * (a.max() if a.size else 0.0))
    text = highlight(tokens, active.tolist())
    if show_activations and active.any():
        levels = activation_levels(a, latent_max)
        pairs = ", ".join(f"({_clean(tokens[i]).strip() or _clean(tokens[i])!r}, {levels[i]})"
                          for i in np.flatnonzero(active))
        text += f"\nActivations: {pairs}"
    return text


# Worked examples: (tokens, 0-10 activations) per excerpt, then reasoning and the explanation.
_WORKED = [
    ([(["The", " ship", " crossed", " the", " Atlantic", " in", " ten", " days", "."], [0, 0, 0, 0, 9, 0, 0, 0, 0]),
      (["We", " swam", " in", " the", " Pacific", " Ocean", " every", " summer", "."], [0, 0, 0, 0, 10, 6, 0, 0, 0]),
      (["Boats", " on", " the", " North", " Sea", " came", " back", " late", "."], [0, 0, 0, 4, 8, 0, 0, 0, 0])],
     [(["The", " river", " flows", " into", " a", " quiet", " lake", "."], [0] * 8)],
     "Every marked span names an ocean or a sea; the words around it are ordinary.",
     "Names of oceans and seas."),
    ([(["def", " open", "(", "file", ",", " mode", "=", "'r'", ",", " buffering", "=", "-1", ")"],
       [0, 0, 0, 0, 0, 0, 8, 0, 0, 0, 7, 0, 0]),
      (["sorted", "(", "iterable", ",", " key", "=", "None", ",", " reverse", "=", "False", ")"],
       [0, 0, 0, 0, 0, 9, 0, 0, 0, 6, 0, 0])],
     [(["x", " ", "=", " ", "compute", "(", ")"], [0] * 7)],
     "Each mark is an '=' right after a parameter name inside a signature or a call.",
     "The equals sign between a parameter name and its default or keyword value."),
]

_INTRO = ("You are an interpretability researcher studying one feature of a language model: a "
          "detector that fires on some tokens of some texts. ")
_PLAIN = ("You will read excerpts where the feature fires. In each excerpt the tokens where it fires "
          "are marked <<like this>>; consecutive marked tokens share one pair of marks.")
_CONTRAST = ("You will read two sections. ACTIVATING EXAMPLES are excerpts where the feature fires; "
             "the tokens where it fires are marked <<like this>>. NON-ACTIVATING EXAMPLES are similar "
             "excerpts where it stays silent. Describe what is present in the first section and "
             "absent from the second.")
_LEVELS = (" After an excerpt, a line 'Activations:' lists the marked tokens with the feature's "
           "strength on each, from 0 to 10.")
_TASK = (" Find what the marked tokens have in common, in their context, and describe it in one "
         "short phrase (at most 15 words). Describe the pattern, not single examples, and do not "
         "mention the marks.")
_ANSWER = f"\nAnswer with one line of the form:\n{MARKER} <your description>"
_ANSWER_COT = (f"\nFirst write at most three short lines of reasoning, then a last line of the form:\n"
               f"{MARKER} <your description>")


@dataclass(frozen=True)
class LLMExplainer:
    """The LLM explainer (default or contrastive); settings go into its prompt hash."""

    name: str = "llm"
    contrastive: bool = False
    threshold: float = 0.3  # tokens >= threshold x the example's max are highlighted
    show_activations: bool = False  # follow each example with its (token, 0-10) pairs
    cot: bool = False  # ask for reasoning before the explanation
    max_examples: int | None = None  # None: all of the explanation set (contrastive: 15)
    max_negatives: int = 5  # contrastive only
    max_tokens: int = 120
    temperature: float = 0.0
    n_samples: int = 1  # best-of-k: k samples at sample_temperature, all recorded
    sample_temperature: float = 0.7
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_samples < 1:
            raise ValueError(f"n_samples must be >= 1, got {self.n_samples}.")
        if self.n_samples > 1 and self.sample_temperature <= 0:
            raise ValueError("best-of-k (n_samples > 1) needs sample_temperature > 0: k samples at "
                             "temperature 0 are the same answer k times.")

    @property
    def prompt_hash(self) -> str:
        """sha256 (16 hex) of the prompt template and every setting."""
        return results.digest({"system": self.system_prompt(), "settings": dataclasses.asdict(self)})

    def system_prompt(self) -> str:
        """Instructions, then the worked examples (inside the system prompt: as chat turns, small
        models copy the last worked answer verbatim far more often)."""
        worked = "\n\n".join(f"Worked example {i + 1}. Excerpts:\n{u}\nAnswer:\n{a}"
                              for i, (u, a) in enumerate(self.worked_examples()))
        return (_INTRO + (_CONTRAST if self.contrastive else _PLAIN)
                + (_LEVELS if self.show_activations else "") + _TASK
                + (_ANSWER_COT if self.cot else _ANSWER) + "\n\n" + worked)

    def _user(self, positives: Sequence[tuple[Sequence[str], Sequence[float]]],
              negatives: Sequence[Sequence[str]], latent_max: float) -> str:
        fmt = dict(threshold=self.threshold, show_activations=self.show_activations)
        pos = "\n".join(f"Example {i + 1}: {format_example(t, a, latent_max, **fmt)}"
                        for i, (t, a) in enumerate(positives))
        if not self.contrastive:
            return pos
        neg = "\n".join(f"Example {i + 1}: {highlight(t, [False] * len(t))}"
                        for i, t in enumerate(negatives)) or "(none found)"
        return f"ACTIVATING EXAMPLES:\n{pos}\n\nNON-ACTIVATING EXAMPLES:\n{neg}"

    def worked_examples(self) -> list[tuple[str, str]]:
        """(excerpts, answer) of each worked example, formatted like a real prompt."""
        return [(self._user(pos, [t for t, _ in neg], 10.0),
                 (f"{reasoning}\n" if self.cot else "") + f"{MARKER} {answer}")
                for pos, neg, reasoning, answer in _WORKED]

    def select(self, lex: LatentExamples) -> tuple[list[Window], list[Window]]:
        """The activating (spread over quantiles) and negative examples shown for one latent."""
        n = self.max_examples or (15 if self.contrastive else len(lex.train))
        negs = list(lex.train_negative[:self.max_negatives]) if self.contrastive else []
        return _spread(lex.train, n), negs

    def messages(self, lex: LatentExamples, decode: Decode) -> tuple[tuple[str, str], ...]:
        pos, neg = self.select(lex)
        user = self._user([(decode(e.token_ids), e.acts) for e in pos],
                          [decode(e.token_ids) for e in neg], lex.max_act)
        return (("system", self.system_prompt()), ("user", user))

    def requests(self, lex: LatentExamples, decode: Decode) -> list[ChatRequest]:
        msgs = self.messages(lex, decode)
        if self.n_samples == 1:
            return [ChatRequest(msgs, self.max_tokens, self.temperature, seed=self.seed, tag=self.name)]
        return [ChatRequest(msgs, self.max_tokens, self.sample_temperature, seed=self.seed + i,
                            tag=self.name) for i in range(self.n_samples)]

    def parse(self, lex: LatentExamples, responses: Sequence[ChatResponse], model: str,
              decode: Decode) -> list[Explanation]:
        pick = int(np.random.default_rng([self.seed, lex.latent]).integers(len(responses)))
        n_pos, n_neg = (len(x) for x in self.select(lex))
        out = []
        prompt = "\n".join(content for _, content in self.messages(lex, decode))
        for i, r in enumerate(responses):
            text, error, kind = self._read(r, prompt)
            details = {"n_examples": n_pos, "n_negatives": n_neg, **({"failure": kind} if kind else {})}
            out.append(Explanation(
                latent=lex.latent, explainer=self.name, text=text, failed=text is None, error=error,
                sample=i, n_samples=len(responses), random_pick=len(responses) > 1 and i == pick,
                model=model, prompt_hash=self.prompt_hash, raw=r.text, prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, cached=r.cached, details=details))
        return out

    def _read(self, r: ChatResponse, prompt: str) -> tuple[str | None, str | None, str | None]:
        """(text, error, failure kind) of one reply; a failure never yields a text."""
        if r.error:
            return None, r.error, "endpoint"
        text, error = parse_answer(r.text or "")
        if text is None:
            if _opens_with_prompt(r.text or "", prompt):  # copying the prompt, not answering it
                return None, f"{error}: the reply copies the prompt", "echo"
            if r.completion_tokens >= self.max_tokens:
                return None, f"{error}: cut off at max_tokens={self.max_tokens}", "cut_off"
            return None, error, "format" if "marker in the reply" in error else "placeholder"
        if _norm(text) in {_norm(w[3]) for w in _WORKED}:
            return None, "repeated a worked example's answer verbatim", "echo"
        bad = check_answer(text, prompt)
        return (None, bad[1], bad[0]) if bad else (text, None, None)


def contrastive_explainer(**kw: Any) -> LLMExplainer:
    """The contrastive LLM explainer (15 activating + 5 hard negatives by default)."""
    return LLMExplainer(**{"name": "contrastive", "contrastive": True, **kw})


def _spread(examples: Sequence[Window], n: int) -> list[Window]:
    """Up to n examples taken round-robin over quantile bins (top bin first), kept in rank order."""
    bins: dict[Any, list[int]] = {}
    for i, e in enumerate(examples):
        bins.setdefault(e.quantile, []).append(i)
    queues = [bins[q] for q in sorted(bins, key=lambda q: (q is None, q))]
    picked: list[int] = []
    for depth in range(max(map(len, queues), default=0)):
        picked += [q[depth] for q in queues if depth < len(q)]
    return [examples[i] for i in sorted(picked[:n])]


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


# Why an answer is not an explanation (``Explanation.details["failure"]``), and what to do.
FAILURES = {
    "endpoint": "the request failed: check the endpoint (is the server up; are the base URL, model "
                "name and API key right?)",
    "cut_off": "the reply stopped at max_tokens before the answer: raise max_tokens",
    "format": "the reply does not follow the answer format: the model is too weak for this prompt",
    "placeholder": "a placeholder or a heading, not a description: the model is too weak for this prompt",
    "echo": "it repeats the prompt or a worked example: the model is too weak for this prompt",
    "too_short": "one or two words are not an explanation: the model is too weak for this prompt",
}
MIN_WORDS = 3
_PLACEHOLDERS = {"your description", "description", "explanation", "answer", "none", "n a"}


def parse_answer(reply: str) -> tuple[str | None, str | None]:
    """(explanation, None) from the text after the last marker, or (None, why it failed)."""
    found = list(_MARKER_RE.finditer(reply))
    if not found:
        return None, f"no {MARKER!r} marker in the reply"
    rest = reply[found[-1].end():].strip()
    line = rest.splitlines()[0].strip().strip("\"'`*").strip() if rest else ""
    if not line or _norm(line) in _PLACEHOLDERS:
        return None, f"nothing after the {MARKER!r} marker"
    return line, None


def _opens_with_prompt(reply: str, prompt: str, n_words: int = 5) -> bool:
    """Whether the reply's first ``n_words`` words stand verbatim in the prompt (a reply that opens
    with the prompt's own frame, e.g. "Worked example 2. Excerpts: Example 1:", is continuing the
    prompt, whatever words follow)."""
    head = _norm(reply).split()[:n_words]
    return len(head) == n_words and f" {' '.join(head)} " in f" {_norm(prompt)} "


def check_answer(text: str, prompt: str) -> tuple[str, str] | None:
    """(failure kind, why) when a parsed answer is not an explanation: a placeholder or a heading
    (ends with ':'), shorter than ``MIN_WORDS`` words, or words that stand verbatim in the prompt
    (an echo of the instructions, the excerpts or a worked example); else None."""
    norm = _norm(text)
    if not norm or norm in _PLACEHOLDERS or text.rstrip().endswith(":") or text.lstrip().startswith("<"):
        return "placeholder", f"{text!r} is a placeholder or a heading, not a description"
    if len(norm.split()) < MIN_WORDS:
        return "too_short", f"{text!r} has {len(norm.split())} word(s); an explanation needs {MIN_WORDS} or more"
    if f" {norm} " in f" {_norm(prompt)} ":
        return "echo", f"{text!r} stands verbatim in the prompt"
    return None


def run_explainers(lexs: Sequence[LatentExamples], explainers: Sequence[Any], decode: Decode,
                   client: LLMClient | None = None, desc: str = "explaining") -> list[Explanation]:
    """Explanations of every non-skipped latent by every explainer; all LLM prompts go out in one
    ``client.run`` call. Order: latent, then explainer, then sample."""
    todo = [x for x in lexs if not x.skipped]
    llm = [e for e in explainers if hasattr(e, "requests")]  # LLM explainers: chat or completion
    if llm and client is None:
        raise ValueError("LLM explainers need an LLMClient: pass client=LLMClient(endpoint, cache_dir).")
    names = [e.name for e in explainers]
    if len(set(names)) != len(names):
        raise ValueError(f"explainer names must be unique, got {names}")
    # grouped by explainer: consecutive prompts share their system prompt, which a local
    # llama.cpp server then reuses from its prefix cache
    jobs = [(x, e, e.requests(x, decode)) for e in llm for x in todo]
    resps = client.run([r for _, _, rs in jobs for r in rs], desc=desc) if jobs else []
    by: dict[tuple[int, str], list[Explanation]] = {}
    i = 0
    for x, e, rs in jobs:
        by[(x.latent, e.name)] = e.parse(x, resps[i:i + len(rs)], client.endpoint.model, decode)
        i += len(rs)
    for e in (e for e in explainers if not hasattr(e, "requests")):
        for x in todo:
            by[(x.latent, e.name)] = [e.explain(x, decode)]
    return [r for x in todo for e in explainers for r in by[(x.latent, e.name)]]


def render_prompt(explainer: LLMExplainer, lex: LatentExamples, decode: Decode) -> str:
    """The messages of one latent's prompt exactly as sent, each under a role header."""
    return "\n\n".join(f"=== {role} ===\n{content}" for role, content in explainer.messages(lex, decode))
