"""Explainers: from a latent's examples to a short text that says what it responds to.

- ``LLMExplainer()``: the default (METHODS §3): system prompt, two worked examples, then the
  latent's examples with the active tokens (>= ``threshold`` x the example's max, neighbours
  merged) between << >>, optionally followed by (token, 0-10) pairs and preceded by reasoning;
  the answer is read after ``[EXPLANATION]:``. A reply without it is a recorded failure.
- ``LLMExplainer(contrastive=True)``: up to 15 activating and 5 hard-negative examples in two
  labelled sections.
- ``TopTokensExplainer`` and ``LogitLensExplainer`` need no LLM.
``run_explainers`` sends every LLM prompt of every latent in one ``LLMClient.run`` call.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import results
from .llm import ChatRequest, ChatResponse, Endpoint, LLMClient, safe_url
from .records import Explanation, LatentExamples, Window, activation_levels, explanations_from

MARKER = "[EXPLANATION]:"
_MARKER_RE = re.compile(r"\[\s*explanation\s*\]\s*:", re.IGNORECASE)
Decode = Callable[[Iterable[int]], list[str]]


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

    def parse(self, lex: LatentExamples, responses: Sequence[ChatResponse],
              model: str) -> list[Explanation]:
        pick = int(np.random.default_rng([self.seed, lex.latent]).integers(len(responses)))
        n_pos, n_neg = (len(x) for x in self.select(lex))
        out = []
        for i, r in enumerate(responses):
            text, error = (None, r.error) if r.error else parse_answer(r.text or "")
            if text is not None and _norm(text) in {_norm(w[3]) for w in _WORKED}:
                text, error = None, "repeated a worked example's answer verbatim"
            out.append(Explanation(
                latent=lex.latent, explainer=self.name, text=text, failed=text is None, error=error,
                sample=i, n_samples=len(responses), random_pick=len(responses) > 1 and i == pick,
                model=model, prompt_hash=self.prompt_hash, raw=r.text, prompt_tokens=r.prompt_tokens,
                completion_tokens=r.completion_tokens, cached=r.cached,
                details={"n_examples": n_pos, "n_negatives": n_neg}))
        return out


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


def parse_answer(reply: str) -> tuple[str | None, str | None]:
    """(explanation, None) from the text after the last marker, or (None, why it failed)."""
    found = list(_MARKER_RE.finditer(reply))
    if not found:
        return None, f"no {MARKER!r} marker in the reply (raise max_tokens if it was cut off)"
    rest = reply[found[-1].end():].strip()
    line = rest.splitlines()[0].strip().strip("\"'`*").strip() if rest else ""
    if not line or line.lower() in {"<your description>", "your description"}:
        return None, f"nothing after the {MARKER!r} marker"
    return line, None


# -- explainers without an LLM --------------------------------------------------------------------
def _show(tok: str) -> str:
    """A token as a reader sees it: stripped; a whitespace-only token keeps its whitespace
    (spaces shown as ␣; _quoted escapes newlines and tabs)."""
    return tok.strip() or tok.replace(" ", "␣")


def _quoted(tokens: Iterable[str]) -> str:
    """Tokens as readable JSON strings, comma-separated."""
    return ", ".join(json.dumps(_show(t), ensure_ascii=False) for t in tokens)


@dataclass(frozen=True)
class TopTokensExplainer:
    """The tokens that most often carry the window max in the explanation set, with counts."""

    n_tokens: int = 5
    name: str = "top_tokens"

    @property
    def prompt_hash(self) -> str:
        return results.digest(dataclasses.asdict(self))

    def explain(self, lex: LatentExamples, decode: Decode) -> Explanation:
        n = len(lex.train)  # " the" and "the" count as one token: what a reader sees
        counts = Counter(_show(t) for t in decode([e.token_ids[e.peak] for e in lex.train]))
        top = counts.most_common(self.n_tokens)
        text = ("Fires on the tokens " + ", ".join(f"{_quoted([t])} ({c} of {n})" for t, c in top)
                + ".") if top else None
        return Explanation(lex.latent, self.name, text, failed=text is None,
                           error=None if top else "no examples", prompt_hash=self.prompt_hash,
                           details={"tokens": [[t, c] for t, c in top], "n_examples": n,
                                    "top_share": top[0][1] / n if top else 0.0})


def final_norm_scale(hf) -> Any:
    """The final norm's per-dimension scale (Gemma's RMSNorm uses 1 + weight), or raise."""
    for path in ("model.norm", "transformer.ln_f", "model.final_layernorm",
                 "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm"):
        try:
            mod = hf.get_submodule(path)
        except AttributeError:
            continue
        w = mod.weight.detach().float()
        return w + 1.0 if "Gemma" in type(mod).__name__ else w
    raise ValueError(f"Could not find the final norm of {type(hf).__name__}: pass norm_scale "
                     "to LogitLensExplainer yourself, or apply_norm=False to leave it out.")


@dataclass(frozen=True)
class LogitLensExplainer:
    """Decoder direction x (final norm scale) x unembedding: top promoted and suppressed tokens."""

    decoder: Any  # torch tensor or array [d_sae, d]
    unembed: Any  # [vocab, d]
    norm_scale: Any = None  # [d] or None
    k: int = 10
    name: str = "logit_lens"

    @classmethod
    def from_subject(cls, subject, sae, k: int = 10, apply_norm: bool = True) -> LogitLensExplainer:
        return cls(sae.W_dec.detach(), subject.hf.get_output_embeddings().weight.detach(),
                   final_norm_scale(subject.hf) if apply_norm else None, k)

    @property
    def prompt_hash(self) -> str:
        return results.digest({"k": self.k, "norm": self.norm_scale is not None, "name": self.name})

    def logits(self, latents: Sequence[int]) -> np.ndarray:
        import torch

        U = torch.as_tensor(self.unembed)
        d = torch.as_tensor(self.decoder)[list(latents)].to(U.device, torch.float32)
        if self.norm_scale is not None:
            d = d * torch.as_tensor(self.norm_scale).to(d.device, torch.float32)
        with torch.inference_mode():
            return (d.to(U.dtype) @ U.T).float().cpu().numpy()

    def _top(self, row: np.ndarray, order: np.ndarray, decode: Decode) -> list[list[Any]]:
        out, seen = [], set()
        for t in order[:20 * self.k]:
            s = decode([int(t)])[0]
            if _show(s).lower() not in seen:
                seen.add(_show(s).lower())
                out.append([s, round(float(row[t]), 3), int(t)])
            if len(out) == self.k:
                break
        return out

    def explain(self, lex: LatentExamples, decode: Decode) -> Explanation:
        row = self.logits([lex.latent])[0]
        up = self._top(row, np.argsort(-row, kind="stable"), decode)
        down = self._top(row, np.argsort(row, kind="stable"), decode)
        text = (f"Promotes the next tokens {_quoted(t for t, _, _ in up[:5])}; "
                f"suppresses {_quoted(t for t, _, _ in down[:5])}.")
        return Explanation(lex.latent, self.name, text, prompt_hash=self.prompt_hash,
                           details={"promoted": up, "suppressed": down})


# -- running ----------------------------------------------------------------------------------
def run_explainers(lexs: Sequence[LatentExamples], explainers: Sequence[Any], decode: Decode,
                   client: LLMClient | None = None, desc: str = "explaining") -> list[Explanation]:
    """Explanations of every non-skipped latent by every explainer; all LLM prompts go out in one
    ``client.run`` call. Order: latent, then explainer, then sample."""
    todo = [x for x in lexs if not x.skipped]
    llm = [e for e in explainers if isinstance(e, LLMExplainer)]
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
        by[(x.latent, e.name)] = e.parse(x, resps[i:i + len(rs)], client.endpoint.model)
        i += len(rs)
    for e in (e for e in explainers if not isinstance(e, LLMExplainer)):
        for x in todo:
            by[(x.latent, e.name)] = [e.explain(x, decode)]
    return [r for x in todo for e in explainers for r in by[(x.latent, e.name)]]


def render_prompt(explainer: LLMExplainer, lex: LatentExamples, decode: Decode) -> str:
    """The messages of one latent's prompt exactly as sent, each under a role header."""
    return "\n\n".join(f"=== {role} ===\n{content}" for role, content in explainer.messages(lex, decode))


def describe(explainer: Any) -> dict[str, Any]:
    """Name, type, prompt hash and settings of an explainer (no weights)."""
    settings = (dataclasses.asdict(explainer) if isinstance(explainer, (LLMExplainer, TopTokensExplainer))
                else {"k": explainer.k, "final_norm": explainer.norm_scale is not None})
    return {"name": explainer.name, "type": type(explainer).__name__,
            "prompt_hash": explainer.prompt_hash, "settings": settings}


def save(run_dir: str | os.PathLike, explanations: Sequence[Explanation], *,
         explainers: Sequence[Any], endpoint: Endpoint | None = None,
         skipped: dict[int, str] | None = None, **header: Any) -> Path:
    """``<run_dir>/explanations.jsonl`` (schema ``autointerp.explanations``): a header
    (explainers with their settings and prompt hashes, endpoint, skipped latents, provenance),
    then one line per latent."""
    from .rundir import RunDir

    by: dict[int, list[Explanation]] = {}
    for e in explanations:
        by.setdefault(e.latent, []).append(e)
    described = [describe(e) for e in explainers]
    return results.write(
        RunDir(Path(run_dir)).explanations, "explanations",
        ({"latent": j, "explanations": by[j]} for j in sorted(by)),
        settings={d["name"]: d["settings"] for d in described},
        prompt_hash=results.digest([d["prompt_hash"] for d in described]),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        explainers=described,
        llm=None if endpoint is None else {"base_url": safe_url(endpoint.base_url), "model": endpoint.model},
        skipped={str(k): v for k, v in (skipped or {}).items()}, **header)


def load_records(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[Explanation]]:
    """(header, explanations) from ``<run_dir>/explanations.jsonl``."""
    from .rundir import RunDir

    header, rows = results.read(RunDir(Path(run_dir)).require("explanations"), "explanations")
    return header, explanations_from(rows)


def to_frame(explanations: Sequence[Explanation]):
    """One row per explanation as a pandas DataFrame."""
    import pandas as pd

    return pd.DataFrame([dataclasses.asdict(r) for r in explanations])


def load(run_dir: str | os.PathLike):
    """One row per explanation (latent, explainer, sample, text, failed, ...) as a DataFrame."""
    return to_frame(load_records(run_dir)[1])


def side_by_side(explanations: Sequence[Explanation]):
    """Latents x explainers: the first sample's text, or "FAILED: reason"."""
    df = to_frame([x for x in explanations if x.sample == 0])
    df["shown"] = [f"FAILED: {e}" if f else t for t, f, e in zip(df.text, df.failed, df.error)]
    return df.pivot(index="latent", columns="explainer", values="shown")[
        list(dict.fromkeys(df.explainer))]


def summary(explanations: Sequence[Explanation]):
    """Per explainer: explanations, failures, failure rate, distinct texts, mean words, cache hits."""
    df = to_frame(explanations)
    ok = df[~df.failed]
    g = df.groupby("explainer", sort=False)
    out = g.agg(explanations=("latent", "size"), failed=("failed", "sum"), cached=("cached", "sum"))
    out["failure_rate"] = out.failed / out.explanations
    out["distinct_texts"] = ok.groupby("explainer").text.nunique().reindex(out.index).fillna(0).astype(int)
    out["mean_words"] = ok.text.str.split().str.len().groupby(ok.explainer).mean().reindex(out.index)
    return out


def verdict(endpoint: Endpoint, llm_summary) -> str:
    """One honest sentence about the LLM explanations of this run, from its own numbers."""
    n = int(llm_summary.explanations.sum())
    rate = float(llm_summary.failed.sum()) / max(n, 1)
    distinct = int(llm_summary.distinct_texts.sum())
    head = (f"These explanations come from the embedded {endpoint.model} (local): it proves the "
            "mechanics, but it is a weak explainer" if endpoint.embedded else
            f"These explanations come from {endpoint.model} at {safe_url(endpoint.base_url)}")
    return (f"{head}. {rate:.0%} of its {n} answers failed; the rest hold {distinct} distinct texts."
            + (" More than half failed: raise max_tokens, or use a stronger model." if rate > 0.5 else ""))
