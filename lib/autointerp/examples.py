"""Example windows per latent: activating windows, rank quantiles, train/test sets, negatives.

A *window* is ``example_ctx_len`` tokens of one cached row. Two ways to cut them:
- ``"fixed"`` (the reference): every row is cut into ``ctx_len / example_ctx_len`` blocks; the first
  block starts after the BOS position, so it is ``first_pos`` tokens shorter.
- ``"centred"``: a window around each peak, the peak ~3/4 in (start = peak - 3W/4, clipped to
  [first_pos, ctx_len - W]); windows of one latent never overlap (greedy, strongest peak first).
A window's activation is its max. Windows are ranked by it and cut into equal-count quantile bins
(bin 0 = the top). The explanation set and a disjoint test set are sampled per bin; negatives are
random windows where the latent never fires and *hard* negatives: windows where a neighbour latent
(decoder cosine or co-occurrence Jaccard) fires strongly and the target is silent.
Everything is seeded per latent (``numpy.random.default_rng([seed, latent])``).
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from . import results
from .neighbours import NEIGHBOUR_SOURCES, find_neighbours
from .records import LatentExamples, Window, latent_examples_from

WINDOW_MODES = ("fixed", "centred")
TRAIN_SAMPLING = ("quantiles", "top", "random")


@dataclass(frozen=True)
class ExampleSettings:
    """How examples are cut and sampled (defaults: the reference's, with centred windows)."""

    example_ctx_len: int = 32
    window: str = "centred"  # "fixed" (reference) | "centred"
    n_quantiles: int = 10
    train_per_quantile: int = 4  # explanation set: n_quantiles x this (reference 40)
    test_per_quantile: int = 5  # test set: n_quantiles x this activating (reference 50) + as many negatives
    train_sampling: str = "quantiles"  # "quantiles" | "top" | "random"
    n_train_negatives: int = 5  # hard negatives shown to the contrastive explainer
    min_examples: int = 200  # fewer activating windows than this: the latent is skipped
    neighbours: str = "decoder"  # "decoder" | "cooccurrence" | "both"
    n_neighbours: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window not in WINDOW_MODES:
            raise ValueError(f"window={self.window!r}: choose one of {WINDOW_MODES}.")
        if self.train_sampling not in TRAIN_SAMPLING:
            raise ValueError(f"train_sampling={self.train_sampling!r}: choose one of {TRAIN_SAMPLING}.")
        if self.neighbours not in NEIGHBOUR_SOURCES:
            raise ValueError(f"neighbours={self.neighbours!r}: choose one of {NEIGHBOUR_SOURCES}.")
        for name in ("example_ctx_len", "n_quantiles", "min_examples"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")

    @property
    def n_train(self) -> int:
        return self.n_quantiles * self.train_per_quantile

    @property
    def n_test(self) -> int:
        return self.n_quantiles * self.test_per_quantile


def settings_for(profile: str, **overrides: Any) -> ExampleSettings:
    """The profile's example settings (``config.SETTINGS["examples"]``), then every override
    that is not None."""
    from .config import settings

    return ExampleSettings(**settings("examples", profile, **overrides))


@dataclass(frozen=True)
class WindowTable:
    """All activating windows of one latent, ranked by max activation (descending)."""

    latent: int
    row: np.ndarray  # int64
    start: np.ndarray  # int64, position in the row
    length: np.ndarray  # int64
    peak: np.ndarray  # int64, position of the max in the row
    max_act: np.ndarray  # float32

    def __len__(self) -> int:
        return int(self.row.size)

    def quantiles(self, n: int) -> np.ndarray:
        """Quantile bin of each (ranked) window: equal-count bins, 0 = top."""
        return quantile_bins(len(self), n)


def quantile_bins(n_items: int, n_bins: int) -> np.ndarray:
    """Bin of each rank 0..n_items-1 in equal-count bins (sizes differ by at most one), 0 = top."""
    edges = np.linspace(0, n_items, n_bins + 1).round().astype(np.int64)
    return np.searchsorted(edges, np.arange(n_items), side="right") - 1


def _check_width(ctx_len: int, width: int, mode: str, first_pos: int) -> None:
    if mode == "fixed" and ctx_len % width:
        raise ValueError(f"example_ctx_len {width} must divide ctx_len {ctx_len} for fixed windows; "
                         f"pick a divisor of {ctx_len} or window='centred'.")
    if width > ctx_len - first_pos:
        raise ValueError(f"example_ctx_len {width} is longer than a row without BOS "
                         f"({ctx_len - first_pos}); pick example_ctx_len <= {ctx_len - first_pos}.")


def windows_from_arrays(latent: int, flat: np.ndarray, vals: np.ndarray, ctx_len: int, width: int,
                        mode: str = "centred", first_pos: int = 1) -> WindowTable:
    """Cut one latent's non-zeros (flat = row*ctx_len+pos, values) into ranked windows."""
    _check_width(ctx_len, width, mode, first_pos)
    flat = np.asarray(flat, np.int64)
    vals = np.asarray(vals, np.float32)
    rows, pos = flat // ctx_len, flat % ctx_len
    if mode == "fixed":
        block = pos // width
        key = rows * (ctx_len // width) + block
        order = np.lexsort((-vals, key))  # per block, strongest first
        first = np.ones(order.size, bool)
        first[1:] = key[order][1:] != key[order][:-1]
        best = order[first]
        w_row, w_peak = rows[best], pos[best]
        w_start = np.maximum(block[best] * width, first_pos)
        w_len = (block[best] + 1) * width - w_start
        w_max = vals[best]
    else:
        w_row, w_start = _centred_starts(rows, pos, vals, ctx_len, width, first_pos)
        w_len = np.full(w_row.size, width, np.int64)
        w_max, w_peak = _window_max(flat, vals, w_row * ctx_len + w_start, w_len)
        w_peak = w_peak - w_row * ctx_len
    rank = np.lexsort((w_start, w_row, -w_max))
    return WindowTable(latent, w_row[rank], w_start[rank], w_len[rank], w_peak[rank],
                       w_max[rank].astype(np.float32))


def _centred_starts(rows: np.ndarray, pos: np.ndarray, vals: np.ndarray, ctx_len: int, width: int,
                    first_pos: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy non-overlapping windows per row, strongest peak first; vectorised over rows.

    Each round accepts the strongest remaining candidate of every row, then drops the candidates
    whose window overlaps it; rounds <= windows per row.
    """
    starts = np.clip(pos - (3 * width) // 4, first_pos, ctx_len - width)
    # A token whose window would hold a stronger token of the latent (or an equal one further
    # left) is no window centre: that window's peak would be the other token, not ~3/4 in.
    key = rows * ctx_len + pos
    by_key = np.argsort(key, kind="stable")
    s_key, s_val = key[by_key], vals[by_key]
    centre = np.ones(key.size, bool)
    for d in range(width):
        probe = rows * ctx_len + starts + d
        i = np.minimum(np.searchsorted(s_key, probe), max(key.size - 1, 0))
        there = s_key[i] == probe
        v = s_val[i]
        centre &= ~(there & ((v > vals) | ((v == vals) & (s_key[i] < key))))
    rows, pos, vals, starts = rows[centre], pos[centre], vals[centre], starts[centre]
    order = np.lexsort((pos, -vals, rows))
    c_row, c_start = rows[order], starts[order]
    out_row, out_start = [], []
    while c_row.size:
        head = np.ones(c_row.size, bool)
        head[1:] = c_row[1:] != c_row[:-1]
        acc_row, acc_start = c_row[head], c_start[head]
        out_row.append(acc_row)
        out_start.append(acc_start)
        # acc_start per candidate: the accepted start of its row (rows are sorted, heads in order)
        group = np.cumsum(head) - 1
        keep = np.abs(c_start - acc_start[group]) >= width
        c_row, c_start = c_row[keep], c_start[keep]
    if not out_row:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(out_row), np.concatenate(out_start)


def _window_max(flat: np.ndarray, vals: np.ndarray, w_flat: np.ndarray,
                w_len: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max value and its flat position in each of some non-overlapping windows."""
    w_max, w_peak = np.zeros(w_flat.size, np.float32), w_flat.copy()
    if not w_flat.size:
        return w_max, w_peak
    order = np.argsort(w_flat, kind="stable")
    i = np.maximum(np.searchsorted(w_flat[order], flat, side="right") - 1, 0)
    m = (flat >= w_flat[order][i]) & (flat < w_flat[order][i] + w_len[order][i])
    idx = order[i][m]
    o = np.lexsort((flat[m], -vals[m], idx))  # ties: the leftmost token
    g, v, f = idx[o], vals[m][o], flat[m][o]
    first = np.ones(g.size, bool)
    first[1:] = g[1:] != g[:-1]
    w_max[g[first]], w_peak[g[first]] = v[first], f[first]
    return w_max, w_peak


def latent_windows(reader, latent: int, settings: ExampleSettings) -> WindowTable:
    """Ranked activating windows of one latent in a cache."""
    flat, vals = reader.latent(latent)
    return windows_from_arrays(latent, flat, vals, reader.ctx_len, settings.example_ctx_len,
                               settings.window, reader.manifest.first_pos)


def _count_inside(sorted_flat: np.ndarray, w_flat: np.ndarray, w_len: np.ndarray) -> np.ndarray:
    """How many of the (sorted) flat positions fall in each window."""
    return (np.searchsorted(sorted_flat, w_flat + w_len, side="left")
            - np.searchsorted(sorted_flat, w_flat, side="left"))


def _dense(flat: np.ndarray, vals: np.ndarray, w_flat: np.ndarray, w_len: np.ndarray) -> list[np.ndarray]:
    """Per-token activations inside each window (windows may overlap: one search per window)."""
    order = np.argsort(flat, kind="stable")
    f, v = flat[order], vals[order]
    out = []
    for a, n in zip(w_flat.tolist(), w_len.tolist()):
        lo, hi = np.searchsorted(f, [a, a + n])
        d = np.zeros(n, np.float32)
        d[f[lo:hi] - a] = v[lo:hi]
        out.append(d)
    return out


def _make(reader, latent: int, flat: np.ndarray, vals: np.ndarray, rows: np.ndarray,
          starts: np.ndarray, lens: np.ndarray, kind: str, quantiles: Sequence[int | None],
          neighbours: Sequence[int | None] | None = None,
          neighbour_acts: Sequence[float | None] | None = None) -> tuple[Window, ...]:
    rows, starts, lens = (np.asarray(a, np.int64) for a in (rows, starts, lens))
    dense = _dense(flat, vals, rows * reader.ctx_len + starts, lens)
    out = []
    for i, (r, s, n) in enumerate(zip(rows.tolist(), starts.tolist(), lens.tolist())):
        acts = dense[i]
        out.append(Window(latent=latent, row=r, start=s,
                           token_ids=tuple(int(t) for t in reader.tokens[r, s:s + n]),
                           acts=tuple(round(float(a), 4) for a in acts),
                           max_act=round(float(acts.max()) if n else 0.0, 4), quantile=quantiles[i],
                           kind=kind, neighbour=None if neighbours is None else neighbours[i],
                           neighbour_act=None if neighbour_acts is None else neighbour_acts[i]))
    return tuple(out)


def windows_at(reader, table: WindowTable, ranks: Sequence[int], quantiles: np.ndarray) -> tuple[Window, ...]:
    """The windows of ``table`` at these ranks, with their activations and quantile bins."""
    ranks = np.asarray(ranks, np.int64)
    flat, vals = reader.latent(table.latent)
    return _make(reader, table.latent, flat, vals, table.row[ranks], table.start[ranks],
                 table.length[ranks], "activating", [int(quantiles[r]) for r in ranks])


def split_train_test(n_windows: int, settings: ExampleSettings,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ranks of the explanation set and of a disjoint test set (per quantile bin)."""
    q = quantile_bins(n_windows, settings.n_quantiles)
    ranks = np.arange(n_windows)
    if settings.train_sampling == "top":
        train = ranks[:settings.n_train]
    elif settings.train_sampling == "random":
        train = np.sort(rng.choice(n_windows, min(settings.n_train, n_windows), replace=False))
    else:
        train = np.concatenate([rng.permutation(ranks[q == b])[:settings.train_per_quantile]
                                for b in range(settings.n_quantiles)])
    free = np.ones(n_windows, bool)
    free[train] = False
    test = np.concatenate([rng.permutation(ranks[(q == b) & free])[:settings.test_per_quantile]
                           for b in range(settings.n_quantiles)])
    return np.sort(train), np.sort(test)


def random_negatives(reader, latent: int, n: int, settings: ExampleSettings,
                     rng: np.random.Generator) -> tuple[Window, ...]:
    """n windows (same cut as the activating ones) where the latent never fires."""
    flat, _ = reader.latent(latent)
    sorted_flat = np.sort(flat)
    L, W, fp = reader.ctx_len, settings.example_ctx_len, reader.manifest.first_pos
    n_rows = reader.tokens.shape[0]
    if settings.window == "fixed":
        nb = L // W
        blocks = np.arange(n_rows * nb)
        r, b = blocks // nb, blocks % nb
        s = np.maximum(b * W, fp)
        ln = (b + 1) * W - s
        silent = _count_inside(sorted_flat, r * L + s, ln) == 0
        pick = rng.permutation(np.flatnonzero(silent))[:n]
        r, s, ln = r[pick], s[pick], ln[pick]
    else:
        m = max(8 * n, 64)
        r = rng.integers(0, n_rows, m)
        s = rng.integers(fp, L - W + 1, m)
        silent = _count_inside(sorted_flat, r * L + s, np.full(m, W)) == 0
        keep = _nonoverlapping(r[silent], s[silent], W)[:n]
        r, s = r[silent][keep], s[silent][keep]
        ln = np.full(r.size, W)
    return _make(reader, latent, flat, np.zeros(flat.size, np.float32), r, s, ln, "random",
                 [None] * len(r))


def _nonoverlapping(rows: np.ndarray, starts: np.ndarray, width: int) -> list[int]:
    """Indices, in order, of candidates that overlap no earlier kept one (same row, |ds| < width)."""
    kept: dict[int, list[int]] = {}
    out = []
    for i, (r, s) in enumerate(zip(rows.tolist(), starts.tolist())):
        if all(abs(s - t) >= width for t in kept.get(r, ())):
            kept.setdefault(r, []).append(s)
            out.append(i)
    return out


def hard_negatives(reader, latent: int, neighbours: Sequence[int], n: int,
                   settings: ExampleSettings) -> tuple[Window, ...]:
    """Top windows of the neighbour latents where the target is silent, round-robin over
    neighbours (strongest first), non-overlapping."""
    flat, _ = reader.latent(latent)
    sorted_flat = np.sort(flat)
    L, W = reader.ctx_len, settings.example_ctx_len
    per: list[list[tuple[int, int, int, float]]] = []
    for k in neighbours:
        t = latent_windows(reader, int(k), settings)
        silent = np.flatnonzero(_count_inside(sorted_flat, t.row * L + t.start, t.length) == 0)[:n]
        per.append([(int(t.row[i]), int(t.start[i]), int(t.length[i]), float(t.max_act[i]))
                    + (int(k),) for i in silent])
    merged = [c for tier in zip_longest(*per) for c in tier if c is not None]
    rows = np.array([c[0] for c in merged], np.int64)
    starts = np.array([c[1] for c in merged], np.int64)
    keep = _nonoverlapping(rows, starts, W)[:n]
    sel = [merged[i] for i in keep]
    return _make(reader, latent, flat, np.zeros(flat.size, np.float32), [c[0] for c in sel],
                 [c[1] for c in sel], [c[2] for c in sel], "hard_negative", [None] * len(sel),
                 [c[4] for c in sel], [round(c[3], 4) for c in sel])


def for_latent(reader, latent: int, settings: ExampleSettings,
               neighbours: Sequence[int] = ()) -> LatentExamples:
    """Explanation set, test set, random and hard negatives of one latent (or why it is skipped)."""
    rng = np.random.default_rng([settings.seed, int(latent)])
    table = latent_windows(reader, latent, settings)
    max_act = float(table.max_act[0]) if len(table) else 0.0
    if len(table) < settings.min_examples:
        return LatentExamples(latent, max_act, len(table), neighbours=tuple(neighbours),
                              skipped_reason=f"{len(table)} activating windows < min_examples="
                                             f"{settings.min_examples}")
    flat, vals = reader.latent(latent)
    q = table.quantiles(settings.n_quantiles)
    train_r, test_r = split_train_test(len(table), settings, rng)

    def act(ranks: np.ndarray) -> tuple[Window, ...]:
        return _make(reader, latent, flat, vals, table.row[ranks], table.start[ranks],
                     table.length[ranks], "activating", [int(x) for x in q[ranks]])

    train, test = act(train_r), act(test_r)
    negs = random_negatives(reader, latent, len(test), settings, rng)
    pool = hard_negatives(reader, latent, neighbours, settings.n_train_negatives + len(test), settings)
    pool = tuple(pool[i] for i in rng.permutation(len(pool)))
    # a short pool is shared in proportion, so neither the explainer nor the test set goes empty
    n_tr = settings.n_train_negatives
    k = min(n_tr, max(int(n_tr > 0 and len(pool) > 0), round(len(pool) * n_tr / max(n_tr + len(test), 1))))
    return LatentExamples(latent, max_act, len(table), train, test, negs, pool[k:], pool[:k],
                          tuple(int(k) for k in neighbours))


def build(reader, latents: Iterable[int], settings: ExampleSettings,
          decoder: np.ndarray | None = None, progress: bool = True) -> list[LatentExamples]:
    """Examples of many latents (seeded per latent, so independent of which others are built)."""
    latents = [int(j) for j in latents]
    nbrs = find_neighbours(reader, latents, settings, decoder) if settings.n_neighbours else {}
    return [for_latent(reader, j, settings, nbrs.get(j, ()))
            for j in tqdm(latents, desc="examples", disable=not progress)]


def pick_latents(stats, n: int, *, seed: int = 0, min_count: int = 1,
                 max_rate: float = 0.05) -> list[int]:
    """A seeded sample of n latents that fire on >= min_count tokens and <= max_rate of tokens."""
    ok = np.flatnonzero((stats.count >= min_count) & (stats.firing_rate <= max_rate))
    if ok.size == 0:
        raise ValueError(f"No latent fires on >= {min_count} tokens and <= {max_rate:.1%} of tokens: "
                         "lower min_examples, raise max_rate, or cache more tokens.")
    rng = np.random.default_rng(seed)
    return sorted(int(j) for j in rng.choice(ok, min(n, ok.size), replace=False))


class TokenDecoder:
    """Token id -> its text (as the tokenizer decodes it alone), memoised."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._memo: dict[int, str] = {}

    def __call__(self, ids: Iterable[int]) -> list[str]:
        ids = [int(i) for i in ids]
        new = sorted(set(ids) - self._memo.keys())
        if new:
            self._memo.update(zip(new, self.tokenizer.batch_decode([[i] for i in new])))
        return [self._memo[i] for i in ids]


# -- persistence ---------------------------------------------------------------------------------
def save(path: str | os.PathLike, examples: Sequence[LatentExamples], **header: Any) -> Path:
    """``examples.jsonl`` (``results`` schema ``autointerp.examples``): header (settings, latents,
    skipped, provenance), then one line per latent; atomic."""
    return results.write(path, "examples", examples, **header)


def load(path: str | os.PathLike) -> tuple[dict[str, Any], list[LatentExamples]]:
    """Read what ``save`` wrote: (header, examples)."""
    header, rows = results.read(path, "examples")
    return header, [latent_examples_from(d) for d in rows]


def settings_dict(settings: ExampleSettings) -> dict[str, Any]:
    return dataclasses.asdict(settings)
