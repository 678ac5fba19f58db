"""Neighbour latents: the latents most like a target, by decoder-direction cosine or by
token-level co-occurrence (Jaccard). Hard negatives are drawn from them (``examples``); the
dashboard and alignment read them too.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import zip_longest
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

if TYPE_CHECKING:
    from .examples import ExampleSettings

NEIGHBOUR_SOURCES = ("decoder", "cooccurrence", "both")


def decoder_neighbours(decoder: np.ndarray, latents: Sequence[int], n: int,
                       alive: np.ndarray | None = None) -> dict[int, tuple[int, ...]]:
    """The n latents whose decoder rows have the highest cosine with each target (alive only)."""
    W = np.asarray(decoder, np.float32)
    W = W / np.maximum(np.linalg.norm(W, axis=1, keepdims=True), 1e-12)
    cos = W[np.asarray(latents)] @ W.T
    if alive is not None:
        cos[:, ~np.asarray(alive, bool)] = -np.inf
    cos[np.arange(len(latents)), np.asarray(latents)] = -np.inf
    top = np.argsort(-cos, axis=1, kind="stable")[:, :n]
    return {int(j): tuple(int(k) for k in t if np.isfinite(cos[i, k]))
            for i, (j, t) in enumerate(zip(latents, top))}


def cooccurrence_neighbours(reader, latents: Sequence[int], n: int,
                            progress: bool = False) -> dict[int, tuple[int, ...]]:
    """The n latents with the highest token-level Jaccard overlap with each target.

    One pass over every latent's non-zeros; targets are packed 64 at a time into a bit mask.
    """
    counts = np.diff(reader.ptr)
    out: dict[int, tuple[int, ...]] = {}
    n_flat = reader.tokens.size
    for b0 in range(0, len(latents), 64):
        batch = [int(j) for j in latents[b0:b0 + 64]]
        mask = np.zeros(n_flat, np.uint64)
        for t, j in enumerate(batch):
            mask[reader.latent(j)[0]] |= np.uint64(1) << np.uint64(t)
        inter = np.zeros((len(batch), reader.d_sae), np.int64)
        for k in tqdm(np.flatnonzero(counts), desc="co-occurrence", disable=not progress):
            m = mask[reader.latent(int(k))[0]]
            m = m[m != 0]
            if m.size:
                bits = (m[:, None] >> np.arange(len(batch), dtype=np.uint64)) & np.uint64(1)
                inter[:, k] = bits.sum(0)
        ids = np.asarray(batch)
        union = counts[ids][:, None] + counts[None, :] - inter
        jac = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
        jac[np.arange(len(batch)), ids] = -1.0
        for i, j in enumerate(batch):
            top = np.argsort(-jac[i], kind="stable")[:n]
            out[j] = tuple(int(k) for k in top if jac[i, k] > 0)
    return out


def find_neighbours(reader, latents: Sequence[int], settings: ExampleSettings,
                    decoder: np.ndarray | None = None) -> dict[int, tuple[int, ...]]:
    """Neighbours per target by the settings' source ("both" interleaves the two lists)."""
    alive = reader.stats.count > 0 if reader.stats is not None else np.diff(reader.ptr) > 0
    lists = []
    if settings.neighbours in ("decoder", "both"):
        if decoder is None:
            raise ValueError("neighbours='decoder' needs the SAE decoder: pass decoder=sae.W_dec "
                             "(as a numpy array), or use neighbours='cooccurrence'.")
        lists.append(decoder_neighbours(decoder, latents, settings.n_neighbours, alive))
    if settings.neighbours in ("cooccurrence", "both"):
        lists.append(cooccurrence_neighbours(reader, latents, settings.n_neighbours))
    out = {}
    for j in latents:
        tiers = zip_longest(*[lst[int(j)] for lst in lists])
        seen = dict.fromkeys(k for tier in tiers for k in tier if k is not None)
        out[int(j)] = tuple(seen)[:settings.n_neighbours]
    return out


__all__ = ["NEIGHBOUR_SOURCES", "decoder_neighbours", "cooccurrence_neighbours", "find_neighbours"]
