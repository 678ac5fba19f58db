"""Surprisal scorer: how much does the explanation help a causal LM predict an example?

The LM reads a fixed prefix (a few description/sentence pairs), then ``Description: <d>`` and
``Sentence: <example>``, where ``<d>`` is the explanation or a neutral description. Per example,
score = mean NLL of the example's tokens under the neutral description minus under the
explanation (nats/token; positive = the explanation helps). The latent's score is the AUROC of
that reduction, activating vs non-activating examples.

Efficiency: the prefix is run once and its ``DynamicCache`` reused; each description extends a
copy of it; examples are then batched (right-padded) after the cached context. Neutral NLLs are
memoised per text, so the shuffled control only recomputes the explanation side.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..records import ScoredExample, ScorerResult, Window, window_text
from .base import check_inputs, check_windows, make_result

NEUTRAL = "Various unrelated sentences."
INTRO = "Each description below is followed by a sentence that matches it.\n\n"
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (
    ("Cooking: ingredients, recipes and kitchen tools.",
     "Whisk the eggs with a pinch of salt before adding the flour."),
    ("Years and dates in history.",
     "The castle was rebuilt in 1486, two years after the great fire."),
    ("Python code that reads files.", "with open(path) as f: data = f.read()"),
)


class SurprisalScorer:
    """Loss-reduction scorer over any HF causal LM (default: the embedded subject model).

    ``model``: None (load ``models.load("embedded")``), a ``SubjectModel`` or an HF causal LM
    (then pass its ``tokenizer``).
    """

    name = "surprisal"

    def __init__(self, model: Any = None, tokenizer: Any = None, *, batch_size: int = 32,
                 pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS, neutral: str = NEUTRAL,
                 intro: str = INTRO, add_bos: bool = True, progress: bool = True) -> None:
        if model is None:
            from .. import models

            model = models.load("embedded")
        if hasattr(model, "hf"):  # a SubjectModel
            from ..remote import needs_local_weights

            needs_local_weights(model, "The surprisal scorer")
            tokenizer = tokenizer or model.tokenizer
            self.model_name = str(model.name)
            model = model.hf
        else:
            self.model_name = str(getattr(model.config, "_name_or_path", type(model).__name__))
        if tokenizer is None:
            raise ValueError("Pass the tokenizer of the HF model (SurprisalScorer(model, tokenizer)) "
                             "or a SubjectModel from autointerp.models.load.")
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: must be >= 1.")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.neutral, self.progress = batch_size, neutral, progress
        self.prefix = intro + "".join(f"Description: {d}\nSentence: {s}\n\n" for d, s in pairs) \
            + "Description:"
        ids = tokenizer(self.prefix, add_special_tokens=True).input_ids
        bos = tokenizer.bos_token_id
        if add_bos and bos is not None and (not ids or ids[0] != bos):
            ids = [bos, *ids]
        self.prefix_ids: list[int] = list(ids)
        self.prompt_hash = hashlib.sha256(
            f"{self.prefix}\x00{neutral}\x00{add_bos}".encode()).hexdigest()[:16]
        self._prefix_cache = None
        self._neutral_nll: dict[str, float] = {}

    # -- tokenisation -----------------------------------------------------------------------------
    def _tok(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def description_ids(self, description: str) -> list[int]:
        """Tokens after the prefix: `` <description>\\nSentence:``."""
        return self._tok(f" {description.strip()}\nSentence:")

    def example_ids(self, text: str) -> list[int]:
        """The example's tokens: the text stripped, after one space, tokenised on its own (so the
        neutral and explanation conditions score exactly the same ids)."""
        ids = self._tok(" " + text.strip())
        if not ids:
            raise ValueError(f"Example text {text!r} has no tokens: drop empty examples.")
        return ids

    # -- NLL -------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.inference_mode()
    def _context(self, description: str):
        """(cache, log-probs of the next token, length) after prefix + description."""
        if self._prefix_cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.model.config)
            ids = torch.tensor([self.prefix_ids], device=self.device)
            self.model(input_ids=ids, past_key_values=cache, use_cache=True)
            self._prefix_cache = cache
        cache = copy.deepcopy(self._prefix_cache)  # forwards append to a cache: never touch the original
        d = self.description_ids(description)
        n0 = len(self.prefix_ids)
        out = self.model(input_ids=torch.tensor([d], device=self.device), past_key_values=cache,
                         position_ids=torch.arange(n0, n0 + len(d), device=self.device)[None],
                         use_cache=True)
        return cache, torch.log_softmax(out.logits[0, -1].float(), -1), n0 + len(d)

    @torch.inference_mode()
    def nll(self, description: str, texts: Sequence[str], *, bar: Any = None) -> np.ndarray:
        """Mean NLL (nats/token) of each text after prefix + description, with the cached context."""
        if not texts:
            return np.zeros(0)
        cache, logp0, n_ctx = self._context(description)
        toks = [self.example_ids(t) for t in texts]
        out = np.zeros(len(toks))
        order = sorted(range(len(toks)), key=lambda i: len(toks[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            b, t = len(idx), max(len(toks[i]) for i in idx)
            ids = torch.zeros((b, t), dtype=torch.long, device=self.device)
            mask = torch.zeros((b, t), dtype=torch.long, device=self.device)
            for r, i in enumerate(idx):
                ids[r, :len(toks[i])] = torch.tensor(toks[i])
                mask[r, :len(toks[i])] = 1
            kv = copy.deepcopy(cache)
            kv.batch_repeat_interleave(b)
            attn = torch.cat([torch.ones((b, n_ctx), dtype=torch.long, device=self.device), mask], 1)
            pos = torch.arange(n_ctx, n_ctx + t, device=self.device).expand(b, t)
            logits = self.model(input_ids=ids, attention_mask=attn, position_ids=pos,
                                past_key_values=kv, use_cache=True).logits.float()
            tok_nll = torch.zeros((b, t), device=self.device)
            tok_nll[:, 0] = -logp0[ids[:, 0]]
            if t > 1:
                # (N, V) layout: cross_entropy over a strided (B, V, T) view sums less accurately
                tok_nll[:, 1:] = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1),
                                                 reduction="none").view(b, t - 1)
            mean = (tok_nll * mask).sum(1) / mask.sum(1)
            out[idx] = mean.cpu().numpy()
            if bar is not None:
                bar.update(b)
        return out

    @torch.inference_mode()
    def nll_uncached(self, description: str, texts: Sequence[str]) -> np.ndarray:
        """Reference: the same NLLs from one full forward per text (no cache, no padding)."""
        ctx = self.prefix_ids + self.description_ids(description)
        out = []
        for text in texts:
            ex = self.example_ids(text)
            logits = self.model(input_ids=torch.tensor([ctx + ex], device=self.device)).logits[0]
            pred = logits[len(ctx) - 1:-1].float()
            out.append(F.cross_entropy(pred, torch.tensor(ex, device=self.device)).item())
        return np.array(out)

    # -- scorer ----------------------------------------------------------------------------------
    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[Window]]) -> list[ScorerResult]:
        """Per latent: score = NLL(neutral) - NLL(explanation) per example; AUROC over labels.
        Each window is read as its token ids decoded together (``records.window_text``)."""
        from tqdm.auto import tqdm

        latents = check_inputs(explanations, examples)
        check_windows(self.name, {lat: examples[lat] for lat in latents})
        text = {lat: [window_text(e, self.tokenizer) for e in examples[lat]] for lat in latents}
        per_lat = {lat: list(dict.fromkeys(text[lat])) for lat in latents}
        need = list(dict.fromkeys(t for lat in latents for t in per_lat[lat]
                                  if t not in self._neutral_nll))
        total = len(need) + sum(len(v) for v in per_lat.values())
        t0 = time.perf_counter()
        results = []
        with tqdm(total=total, desc="surprisal", unit="ex", disable=not self.progress) as bar:
            self._neutral_nll.update(zip(need, self.nll(self.neutral, need, bar=bar).tolist()))
            for lat in latents:
                expl = dict(zip(per_lat[lat], self.nll(explanations[lat], per_lat[lat], bar=bar)))
                scored = [ScoredExample(latent=lat, example_id=e.id, text=t, label=e.label,
                                        quantile=e.quantile, score=float(self._neutral_nll[t] - expl[t]))
                          for e, t in zip(examples[lat], text[lat])]
                usage = {"model": self.model_name, "prompt_hash": self.prompt_hash,
                         "neutral": self.neutral, "n_examples": len(per_lat[lat])}
                results.append(make_result(lat, self.name, explanations[lat], scored, usage=usage))
        run = {"seconds_total": round(time.perf_counter() - t0, 3), "n_forwarded_total": total}
        return [dataclasses.replace(r, usage={**r.usage, **run}) for r in results]
