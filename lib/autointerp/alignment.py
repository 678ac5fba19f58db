"""One-to-one matching of the latents of two SAEs (adjacent layers, two seeds, two widths).

Each latent is a unit direction (decoder row, encoder column, or its centred activations over a
shared set of tokens); the Hungarian matching minimises the total cost ``1 - cosine``, and the
distribution of matched cosines measures how much the two dictionaries share (Paulo et al. 2024,
"Automatically Interpreting Millions of Features"; Paulo & Belrose 2025 on cross-seed sharing).

- ``method="dense"``: ``scipy.optimize.linear_sum_assignment`` on the full cost matrix.
- ``method="sparse"``: a candidate graph (each A row's top-m B rows united with each B row's top-m
  A rows), built block by block so the n_a x n_b matrix is never held, solved exactly with
  ``scipy.sparse.csgraph.min_weight_full_bipartite_matching``. It is the optimum over the candidate
  edges, which in practice is the full optimum or within a hair of it. If the graph has no full
  matching, m is doubled and the graph rebuilt, up to ``max_retries`` times.
- ``precision="bfloat16"`` (sparse): the candidate products in bfloat16, several times faster on
  CPUs with AMX / AVX512-BF16; edge weights are then cosines rounded to ~1e-3, which also makes
  the solver several times faster (ties), for a total cost ~1e-5 (relative) above float32's.
  Matched similarities are always recomputed exactly. ``precision="auto"`` (the default) takes
  bfloat16 where this machine multiplies it at least 1.5x faster than float32 (``fastest_precision``
  times one block product of each, once per process), else float32: on a CPU without bfloat16
  units it is several times *slower*, so the choice is measured, not assumed.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from tqdm.auto import tqdm

Matrix = np.ndarray | torch.Tensor
DENSE_MAX = 4096 * 4096  # method="auto" goes dense up to this many n_a * n_b entries
GROUP = 32  # columns per group when pruning an A row's candidates
COL_GROUP = 8  # rows per group when pruning a B row's candidates
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_FASTEST: dict[int, str] = {}
OFFSET = 2.0  # sparse edge weight = OFFSET - cosine >= 1: scipy reads zero weights as no edge


@dataclass(frozen=True, eq=False)
class Candidates:
    """Top-m lists both ways: ``a_idx[i]`` are the B rows most similar to A row i (best first),
    ``b_idx[j]`` the A rows most similar to B row j; ``*_sim`` their cosines."""

    a_idx: np.ndarray  # [n_a, min(m, n_b)] int64
    a_sim: np.ndarray  # [n_a, min(m, n_b)] float32
    b_idx: np.ndarray  # [n_b, min(m, n_a)] int64
    b_sim: np.ndarray  # [n_b, min(m, n_a)] float32
    m: int


@dataclass(frozen=True, eq=False)
class Matching:
    """A one-to-one matching: A row ``rows[k]`` goes with B row ``cols[k]`` (every row of the
    smaller side is matched once), with cosine ``similarity[k]``; cost = sum(1 - similarity)."""

    rows: np.ndarray  # int64, sorted
    cols: np.ndarray  # int64, distinct
    similarity: np.ndarray  # float64
    method: str  # "dense" or "sparse"
    m: int | None  # candidates per side that gave a full matching (sparse only)
    n_a: int
    n_b: int
    total_cost: float
    precision: str = "float32"  # of the candidate search (sparse); similarities are exact

    def share_above(self, threshold: float = 0.7) -> float:
        """Fraction of matched pairs (= latents of the smaller SAE) with cosine > threshold."""
        return float(np.mean(self.similarity > threshold)) if len(self.similarity) else 0.0

    def quantiles(self, qs: Sequence[float] = (0.05, 0.25, 0.5, 0.75, 0.95)) -> dict[float, float]:
        """Quantiles of the matched cosines."""
        return {float(q): float(v) for q, v in zip(qs, np.quantile(self.similarity, qs))}

    def histogram(self, bins: int = 20, lo: float = -1.0,
                  hi: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Counts of matched cosines in ``bins`` equal bins over [lo, hi], and the bin edges."""
        return np.histogram(self.similarity, bins=bins, range=(lo, hi))


@dataclass(frozen=True)
class Agreement:
    """Cosine of embedded explanations of matched pairs vs a shuffled pairing, with a bootstrap
    CI (over pairs) of the difference."""

    matched_mean: float
    shuffled_mean: float
    difference: float
    ci_low: float
    ci_high: float
    n: int


def unit_rows(X: Matrix) -> torch.Tensor:
    """Float32 CPU tensor with unit-norm rows (all-zero rows stay zero)."""
    T = torch.as_tensor(X).detach().to("cpu", torch.float32)
    if T.ndim != 2:
        raise ValueError(f"expected a 2-d [n, d] matrix, got shape {tuple(T.shape)}")
    return T / T.norm(dim=1, keepdim=True).clamp_min(1e-12)


def _rows(X: Matrix, normalize: bool) -> torch.Tensor:
    return unit_rows(X) if normalize else torch.as_tensor(X).detach().to("cpu", torch.float32)


def directions(sae, kind: str = "decoder") -> torch.Tensor:
    """Unit latent directions [d_sae, d_in] of an sae-lens SAE: decoder rows, or encoder columns."""
    if kind == "decoder":
        W = sae.W_dec
    elif kind == "encoder":
        W = sae.W_enc.T
    else:
        raise ValueError(f"kind must be 'decoder' or 'encoder', not {kind!r}")
    return unit_rows(W)


def activation_directions(z: Matrix) -> torch.Tensor:
    """[n_latents, n_tokens] rows of centred, unit-norm activations: the cosine of two rows is the
    Pearson correlation of the latents, so ``match`` on these matches by correlation. Dead
    (constant) latents become zero rows (correlation 0 with everything). Takes dense [n_tokens,
    n_latents] activations."""
    Z = torch.as_tensor(z).detach().to("cpu", torch.float32)
    return unit_rows((Z - Z.mean(0, keepdim=True)).T)


def activation_correlation(za: Matrix, zb: Matrix) -> np.ndarray:
    """Pearson correlation [n_a, n_b] of two SAEs' latents on the same tokens (dense: small SAEs
    only; for large ones pass ``activation_directions`` of each to ``match``)."""
    if len(za) != len(zb):
        raise ValueError(f"activations must cover the same tokens: {len(za)} vs {len(zb)} rows")
    return (activation_directions(za) @ activation_directions(zb).T).numpy()


def candidates(A: Matrix, B: Matrix, m: int = 32, *, block: int = 4096, normalize: bool = True,
               precision: str = "float32", progress: bool = True) -> Candidates:
    """Exact top-m cosines both ways, from ``block`` A rows times B at a time (never the full
    n_a x n_b matrix; blocks shrink so one holds at most 2**28 entries).

    Both sides prune with group maxima: a row's top-m entries lie in its m column groups with the
    largest maxima, and a B row's list only takes entries at or above its current m-th best (after
    the first block, few), found through maxima over groups of rows. ``precision="bfloat16"``
    multiplies in bfloat16 (several times faster where the CPU has AMX / AVX512-BF16): lists and
    cosines are then right to about 1e-3, so near-ties at the m-th place may swap.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, not {precision!r}")
    A, B = _rows(A, normalize), _rows(B, normalize)
    n_a, n_b = len(A), len(B)
    ma, mb = min(m, n_b), min(m, n_a)
    g, gc = GROUP, COL_GROUP
    nbq = -(-n_b // g)  # column groups; A and B are padded with zero rows, their cosines -inf
    ncols = nbq * g
    Bp = torch.cat([B, B.new_zeros(ncols - n_b, B.shape[1])])
    Ap = torch.cat([A, A.new_zeros(-n_a % g, A.shape[1])])
    block = max(g, min(block, 2**28 // ncols) // g * g)
    dtype = PRECISIONS[precision]
    Am, Bm = Ap.to(dtype), Bp.to(dtype).T
    buf = torch.empty(min(block, len(Ap)), ncols, dtype=dtype)  # reused: no fresh pages per block
    a_sim = torch.empty(n_a, ma)
    a_idx = torch.empty(n_a, ma, dtype=torch.long)
    b_sim = torch.full((ncols, mb), -torch.inf)
    b_sim[n_b:] = torch.inf  # padding columns never take candidates
    b_idx = torch.full((ncols, mb), -1, dtype=torch.long)
    offsets, col_offsets = torch.arange(g), torch.arange(gc) * ncols
    starts = range(0, n_a, block)
    with torch.inference_mode():
        for s in tqdm(starts, desc="alignment candidates", disable=not progress or len(starts) < 4):
            Ablk = Am[s:s + block]
            n = min(len(Ablk), n_a - s)  # real rows
            S = torch.matmul(Ablk, Bm, out=buf[:len(Ablk)])
            S[:, n_b:] = -torch.inf
            S[n:] = -torch.inf
            # A side: top-ma entries within the top-ma column groups (columns q, q + nbq, ...).
            gmax = S[:n].view(n, g, nbq).amax(1)
            groups = torch.topk(gmax, min(ma, nbq), dim=1).indices
            cand = (groups[:, :, None] + offsets * nbq).view(n, -1)
            v, pos = torch.topk(torch.gather(S[:n], 1, cand).float(), ma, dim=1)
            a_sim[s:s + n], a_idx[s:s + n] = v, torch.gather(cand, 1, pos)
            # B side: entries at or above each column's threshold, found through row-group maxima.
            gmax = S.view(-1, gc, ncols).amax(1)  # [bs / gc, columns]
            thr = b_sim[:, -1]
            if s == 0 and len(gmax) >= mb:  # lists empty: the block's own mb-th best group max
                thr = torch.maximum(thr, torch.topk(gmax, mb, dim=0).values[-1])
            # thr holds values of S's dtype, so comparing in it is exact (and fast in bfloat16)
            hit = torch.from_numpy(np.flatnonzero((gmax >= thr.to(S.dtype)).numpy()))
            c = hit % ncols
            flat = ((hit - c) * gc + c)[:, None] + col_offsets  # the group's gc entries in S
            c = c.repeat_interleave(gc)
            v = S.view(-1)[flat.view(-1)].float()
            keep = (v >= thr[c]) & (v > -torch.inf)
            c, order = torch.sort(c[keep], stable=True)
            _merge(b_sim, b_idx, c, (flat.view(-1)[keep] // ncols + s)[order], v[keep][order])
    return Candidates(a_idx.numpy(), a_sim.numpy(), b_idx[:n_b].numpy(), b_sim[:n_b].numpy(), m)


def _merge(b_sim: torch.Tensor, b_idx: torch.Tensor, c: torch.Tensor, r: torch.Tensor,
           v: torch.Tensor) -> None:
    """Merge new entries (column c, sorted; A row r; cosine v) into the top lists, in place."""
    if not len(c):
        return
    counts = torch.bincount(c, minlength=len(b_sim))
    cols = torch.nonzero(counts, as_tuple=True)[0]
    k = counts[cols]
    mb = b_sim.shape[1]
    slot = torch.arange(len(c)) - torch.repeat_interleave(torch.cumsum(k, 0) - k, k)
    row = torch.repeat_interleave(torch.arange(len(cols)), k)
    vals = torch.full((len(cols), mb + int(k.max())), -torch.inf)
    idx = torch.full(vals.shape, -1, dtype=torch.long)
    vals[:, :mb], idx[:, :mb] = b_sim[cols], b_idx[cols]
    vals[row, mb + slot], idx[row, mb + slot] = v, r
    top, pos = torch.topk(vals, mb, dim=1)
    b_sim[cols], b_idx[cols] = top, torch.gather(idx, 1, pos)


def candidate_graph(c: Candidates, n_a: int, n_b: int) -> csr_matrix:
    """The union of both top-m lists, deduplicated, as a csr matrix of weights OFFSET - cosine."""
    ma, mb = c.a_idx.shape[1], c.b_idx.shape[1]
    rows = np.concatenate([np.repeat(np.arange(n_a, dtype=np.int64), ma), c.b_idx.ravel()])
    cols = np.concatenate([c.a_idx.ravel(), np.repeat(np.arange(n_b, dtype=np.int64), mb)])
    sims = np.concatenate([c.a_sim.ravel(), c.b_sim.ravel()])
    key, first = np.unique(rows * n_b + cols, return_index=True)  # sorted by row, then column
    indptr = np.zeros(n_a + 1, np.int64)
    np.cumsum(np.bincount(key // n_b, minlength=n_a), out=indptr[1:])
    weights = OFFSET - sims[first].astype(np.float64)
    return csr_matrix((weights, (key % n_b).astype(np.int32), indptr), shape=(n_a, n_b))


def _pair_cosines(A: torch.Tensor, B: torch.Tensor, rows: np.ndarray, cols: np.ndarray,
                  chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(rows))
    for s in range(0, len(rows), chunk):
        r, c = torch.from_numpy(rows[s:s + chunk]), torch.from_numpy(cols[s:s + chunk])
        out[s:s + chunk] = (A[r].double() * B[c].double()).sum(1).numpy()
    return out


def fastest_precision(d: int = 576, *, speedup: float = 1.5) -> str:
    """"bfloat16" if a [1024, d] x [d, 4096] product runs ``speedup`` times faster in it than in
    float32 on this machine (best of 3 after a warm-up, measured once per width), else "float32"."""
    import time

    if d not in _FASTEST:
        gen = torch.Generator().manual_seed(0)
        a, b = torch.randn(1024, d, generator=gen), torch.randn(d, 4096, generator=gen)
        best = {}
        for name in ("float32", "bfloat16"):
            x, y = a.to(PRECISIONS[name]), b.to(PRECISIONS[name])
            torch.mm(x, y)
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                torch.mm(x, y)
                times.append(time.perf_counter() - t0)
            best[name] = min(times)
        _FASTEST[d] = "bfloat16" if best["float32"] >= speedup * best["bfloat16"] else "float32"
    return _FASTEST[d]


def match(A: Matrix, B: Matrix, *, method: str = "auto", m: int = 32, block: int = 4096,
          threshold: int = DENSE_MAX, max_retries: int = 3, normalize: bool = True,
          precision: str = "auto", progress: bool = True) -> Matching:
    """Match rows of A [n_a, d] to rows of B [n_b, d] one-to-one, minimising sum(1 - cosine).

    ``method="auto"`` is dense when n_a * n_b <= ``threshold``, else sparse with ``m`` candidates
    per row each way; an infeasible candidate graph is rebuilt with m doubled, at most
    ``max_retries`` times, before a ValueError. Rows are unit-normalised unless ``normalize=False``
    (then similarities are plain dot products). ``precision`` of the sparse candidate search:
    "float32", "bfloat16" or "auto" (``fastest_precision``).
    """
    if method == "auto":
        method = "dense" if len(A) * len(B) <= threshold else "sparse"
    if method not in ("dense", "sparse"):
        raise ValueError(f"method must be 'auto', 'dense' or 'sparse', not {method!r}")
    A, B = _rows(A, normalize), _rows(B, normalize)
    if A.shape[1] != B.shape[1]:
        raise ValueError(f"A and B need the same width: {A.shape[1]} vs {B.shape[1]}")
    n_a, n_b = len(A), len(B)
    used_m = None
    if method == "dense":
        cost = torch.mm(A.double(), B.double().T).neg_().add_(1.0)  # in place: one n_a x n_b copy
        rows, cols = linear_sum_assignment(cost.numpy())
        del cost
    else:
        if precision == "auto":
            precision = fastest_precision(A.shape[1])
        tried = []
        for attempt in range(max_retries + 1):
            cur = m * 2 ** attempt
            tried.append(cur)
            graph = candidate_graph(candidates(A, B, cur, block=block, normalize=False,
                                               precision=precision, progress=progress), n_a, n_b)
            try:
                rows, cols = min_weight_full_bipartite_matching(graph)
                used_m = cur
                break
            except ValueError:  # "no full matching exists": rebuild with twice the candidates
                del graph
        else:
            raise ValueError(
                f"The sparse candidate graph has no full matching for m in {tried} (top-m "
                f"candidates per row each way; n_a={n_a}, n_b={n_b}). Raise m or max_retries, or "
                f"use method='dense' if n_a * n_b entries fit in memory.")
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    order = np.argsort(rows, kind="stable")
    rows, cols = rows[order], cols[order]
    sim = _pair_cosines(A, B, rows, cols)
    return Matching(rows, cols, sim, method, used_m, n_a, n_b, float(np.sum(1.0 - sim)),
                    precision if method == "sparse" else "float64")


def to_record(matching: Matching, bins: int = 20) -> dict:
    """A JSON-ready summary: sizes, method, cost, shares, quantiles, histogram, and the pairs."""
    counts, edges = matching.histogram(bins)
    return {
        "method": matching.method, "m": matching.m, "precision": matching.precision,
        "n_a": matching.n_a, "n_b": matching.n_b,
        "n_matched": int(len(matching.rows)), "total_cost": matching.total_cost,
        "mean_similarity": float(np.mean(matching.similarity)) if len(matching.rows) else None,
        "share_above": {str(t): matching.share_above(t) for t in (0.5, 0.7, 0.9)},
        "quantiles": {str(q): v for q, v in matching.quantiles().items()},
        "histogram": {"counts": counts.tolist(), "edges": [float(e) for e in edges]},
        "rows": matching.rows.tolist(), "cols": matching.cols.tolist(),
        "similarity": [float(s) for s in matching.similarity],
    }


def explanation_agreement(texts_a: Sequence[str], texts_b: Sequence[str],
                          pairs: Matching | tuple[Sequence[int], Sequence[int]],
                          embed_fn: Callable[[list[str]], np.ndarray], *, seed: int = 0,
                          n_boot: int = 1000, level: float = 0.95) -> Agreement:
    """Do matched latents get similar explanations? Mean cosine of the embedded explanations of
    matched pairs, minus that of a shuffled pairing (B partners randomly permuted), with a
    percentile bootstrap CI (``level``) of the mean difference, resampling pairs (the one shuffle
    fixed). ``pairs`` is a Matching or (rows, cols) indexing texts_a / texts_b; ``embed_fn`` maps
    a list of texts to an [n, dim] array (e.g. the lab's MiniLM embedder)."""
    rows, cols = (pairs.rows, pairs.cols) if isinstance(pairs, Matching) else pairs
    rows, cols = np.asarray(rows, np.int64), np.asarray(cols, np.int64)
    n = len(rows)
    if n < 2:
        raise ValueError(f"need at least 2 matched pairs, got {n}")
    ea = np.asarray(embed_fn([texts_a[i] for i in rows]), np.float64)
    eb = np.asarray(embed_fn([texts_b[j] for j in cols]), np.float64)
    ea /= np.maximum(np.linalg.norm(ea, axis=1, keepdims=True), 1e-12)
    eb /= np.maximum(np.linalg.norm(eb, axis=1, keepdims=True), 1e-12)
    rng = np.random.default_rng(seed)
    matched = np.sum(ea * eb, 1)
    shuffled = np.sum(ea * eb[rng.permutation(n)], 1)
    diff = matched - shuffled
    chunk = max(1, 2**22 // n)  # resample in chunks: n_boot x n indices can be large
    boot = np.concatenate([diff[rng.integers(0, n, size=(min(chunk, n_boot - b), n))].mean(1)
                           for b in range(0, n_boot, chunk)])
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return Agreement(float(matched.mean()), float(shuffled.mean()), float(diff.mean()),
                     float(lo), float(hi), n)
