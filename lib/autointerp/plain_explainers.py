"""Explainers that need no LLM: a latent's top tokens (``TopTokensExplainer``), its top words
(``TopWordsExplainer``) and the tokens its decoder direction promotes through the unembedding
(``LogitLensExplainer``). The floor every LLM explanation should beat; ``explain`` re-exports them."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import results
from .records import Explanation, LatentExamples

Decode = Callable[[Iterable[int]], list[str]]


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


@dataclass(frozen=True)
class TopWordsExplainer:
    """The top tokens phrased as a reader would write them: 'the word "file"' when one token
    carries at least ``one_word_share`` of the window maxima, else 'the words "a", "b" and "c"'
    (the fewest top tokens that carry ``cover`` of them, at most ``n_tokens``)."""

    n_tokens: int = 3
    one_word_share: float = 0.6
    cover: float = 0.8
    name: str = "top_words"

    @property
    def prompt_hash(self) -> str:
        return results.digest(dataclasses.asdict(self))

    def explain(self, lex: LatentExamples, decode: Decode) -> Explanation:
        counts = Counter(_show(t) for t in decode([e.token_ids[e.peak] for e in lex.train])).most_common()
        n = sum(c for _, c in counts)
        if not counts:
            return Explanation(lex.latent, self.name, None, failed=True, error="no examples", prompt_hash=self.prompt_hash)
        if counts[0][1] >= self.one_word_share * n:
            words = [counts[0][0]]
        else:
            cum = np.cumsum([c for _, c in counts]) / n
            words = [t for t, _ in counts[: min(self.n_tokens, int(np.searchsorted(cum, self.cover)) + 1)]]
        quoted = [json.dumps(w, ensure_ascii=False) for w in words]
        text = (f"the word {quoted[0]}" if len(quoted) == 1
                else "the words " + ", ".join(quoted[:-1]) + f" and {quoted[-1]}")
        return Explanation(lex.latent, self.name, text, prompt_hash=self.prompt_hash,
                           details={"words": words, "n_examples": n})


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

    def promoted_suppressed(self, latent: int, decode: Decode) -> tuple[list[list[Any]], list[list[Any]]]:
        """The k tokens latent's direction promotes most and suppresses most: [token, logit, id] each."""
        row = self.logits([latent])[0]
        return (self._top(row, np.argsort(-row, kind="stable"), decode),
                self._top(row, np.argsort(row, kind="stable"), decode))

    def explain(self, lex: LatentExamples, decode: Decode) -> Explanation:
        up, down = self.promoted_suppressed(lex.latent, decode)
        text = (f"Promotes the next tokens {_quoted(t for t, _, _ in up[:5])}; "
                f"suppresses {_quoted(t for t, _, _ in down[:5])}.")
        return Explanation(lex.latent, self.name, text, prompt_hash=self.prompt_hash,
                           details={"promoted": up, "suppressed": down})


# -- running ----------------------------------------------------------------------------------
