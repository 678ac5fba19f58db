"""Streaming sparse cache of SAE latent activations.

Layout of ``<run>/cache``::

    tokens.npy              int32 [n_rows, ctx_len], written once
    manifest.json           what made this cache (model, hook, SAE, corpus hash, shard size)
    shards/shard_00000.npz  non-zeros of rows [i*shard_rows, (i+1)*shard_rows):
                            row int32, pos int16, latent int32, value float16
    index/                  the same non-zeros sorted by latent (memory-mapped .npy):
                            ptr int64 [d_sae+1], flat int64 (row*ctx_len+pos), value float16
    stats.npz               per-latent count, max, sum, top token share

Every file is written to a temporary name and renamed, so a crash leaves no half shard; a rerun
skips the shards that exist. RAM is bounded by one shard, whatever ``n_tokens`` is.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .models import hooked_output  # noqa: F401 - also ai.cache.hooked_output
from .records import ACTIVATING, CacheManifest, LatentStats, Window  # noqa: F401 - also ai.cache.*

SHARD_FIELDS = ("row", "pos", "latent", "value")


def _save_atomic(path: Path, writer: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    writer(tmp)
    os.replace(tmp, path)


def _npz_writer(arrays: dict[str, np.ndarray]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return write


def sae_fingerprint(sae) -> str:
    """Short hash of all of an SAE's weights (as float32, streamed in 16 MiB chunks of each tensor),
    so a cache knows which SAE made it."""
    h = hashlib.sha256()
    for name, tensor in sorted(sae.state_dict().items()):
        h.update(f"{name}{tuple(tensor.shape)}".encode())
        for part in tensor.detach().reshape(-1).split(1 << 22):
            h.update(part.float().cpu().contiguous().numpy())
    return h.hexdigest()[:16]


def encode_batch(subject, sae, hook: str, input_ids: torch.Tensor) -> torch.Tensor:
    """Forward up to ``hook`` only and encode with the SAE: [B, T, d_sae]."""
    hidden = hooked_output(subject, hook, input_ids)
    with torch.inference_mode():
        return sae.encode(hidden.to(sae.W_enc.dtype))


def sparsify(acts: torch.Tensor, row0: int, first_pos: int = 0) -> dict[str, np.ndarray]:
    """Non-zeros of [B, T, d_sae] activations at positions >= first_pos, as shard arrays."""
    b, t, l = acts[:, first_pos:].nonzero(as_tuple=True)
    t = t + first_pos
    return {"row": (b + row0).to(torch.int32).numpy(), "pos": t.to(torch.int16).numpy(),
            "latent": l.to(torch.int32).numpy(),
            "value": acts[b, t, l].to(torch.float16).numpy()}


def _topk_k(sae) -> int | None:
    """k if ``sae.encode`` is sae-lens's plain TopKSAE.encode (dense TopK, no post hooks), else None."""
    from sae_lens import TopKSAE
    from sae_lens.saes.topk_sae import TopK

    act = getattr(sae, "activation_fn", None)
    plain = (isinstance(sae, TopKSAE) and type(sae).encode is TopKSAE.encode and type(act) is TopK
             and not act.use_sparse_activations and not sae.hook_sae_acts_post._forward_hooks)
    return int(act.k) if plain else None


def sparse_encode(sae, hidden: torch.Tensor, row0: int, first_pos: int = 0) -> dict[str, np.ndarray]:
    """Shard arrays of ``sae``'s codes for [B, T, d] inputs; equal to ``sparsify(sae.encode(hidden))``.

    For sae-lens TopK SAEs it runs TopKSAE.encode's own ops up to the pre-activations, then keeps
    torch.topk's (values, indices) as they are: no dense [B, T, d_sae] scatter and nonzero scan.
    """
    k = _topk_k(sae)
    hidden = hidden.to(sae.W_enc.device)  # a model spread over GPUs may hand a layer's output from another one
    with torch.inference_mode():
        if k is None:
            return sparsify(sae.encode(hidden.to(sae.W_enc.dtype)).cpu(), row0, first_pos)
        pre = sae.process_sae_in(hidden) @ sae.W_enc
        pre += sae.b_enc  # in place: the same sums as ``+ b_enc`` without a second [B,T,d_sae]
        pre = sae.hook_sae_acts_pre(pre)
        if sae.cfg.rescale_acts_by_decoder_norm:
            pre = pre * sae.W_dec.norm(dim=-1)
        vals, idx = torch.topk(pre, k=k, dim=-1, sorted=False)
        vals = vals[:, first_pos:].relu().float().cpu().numpy()  # numpy has no bfloat16
        idx = idx[:, first_pos:].cpu().numpy()
    order = np.argsort(idx, axis=-1)  # latents ascending within a token, as nonzero() orders them
    lat, val = np.take_along_axis(idx, order, -1), np.take_along_axis(vals, order, -1)
    keep = val != 0  # nonzero()'s test
    b, t, _ = np.indices(lat.shape, sparse=True)
    return {"row": np.broadcast_to((b + row0).astype(np.int32), lat.shape)[keep],
            "pos": np.broadcast_to((t + first_pos).astype(np.int16), lat.shape)[keep],
            "latent": lat[keep].astype(np.int32), "value": val[keep].astype(np.float16)}


class ShardWriter:
    """Writes shards on a background thread so disk I/O overlaps the next forward."""

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, path: Path, arrays: dict[str, np.ndarray]) -> None:
        self.join()

        def run() -> None:
            try:
                _save_atomic(path, _npz_writer(arrays))
            except BaseException as err:  # noqa: BLE001 - re-raised on the main thread
                self._error = err
        self._thread = threading.Thread(target=run, daemon=False)
        self._thread.start()

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def build_cache(cache_dir: Path, subject, sae, hook: str, tokens: np.ndarray, *, sae_id: str,
                corpus_hash: str, first_pos: int = 1, batch_size: int = 16,
                shard_rows: int = 256, progress: bool = True, rank: int = 0, world_size: int = 1,
                barrier: Callable[[], None] | None = None) -> "CacheReader":
    """Cache the SAE's non-zero activations over ``tokens`` rows; resumes an interrupted run.
    As one of ``world_size`` ranks (``autointerp.distributed``), this process computes the missing
    shards ``i % world_size == rank``; after ``barrier()`` rank 0 builds the index and stats."""
    cache_dir = Path(cache_dir)
    wait = barrier or (lambda: None)
    n_rows, ctx_len = tokens.shape
    manifest = CacheManifest(model=subject.name, hook=hook, sae_id=sae_id,
                             sae_hash=sae_fingerprint(sae), d_sae=int(sae.cfg.d_sae),
                             ctx_len=int(ctx_len), n_rows=int(n_rows), shard_rows=int(shard_rows),
                             corpus_hash=corpus_hash, first_pos=int(first_pos))
    if rank == 0:
        _prepare(cache_dir, manifest, tokens)
    wait()
    if rank != 0:  # the folder is rank 0's to clean; the others only check its manifest
        _prepare(cache_dir, manifest, tokens, clean=False)
    shard_dir = cache_dir / "shards"
    todo = [i for i in range(rank, manifest.n_shards, world_size) if not _shard_path(shard_dir, i).exists()]
    writer = ShardWriter()
    # Per-latent counts of the shards made here spare build_index a pass (a resumed run recounts).
    counts = np.zeros(manifest.d_sae, np.int64) if len(todo) == manifest.n_shards else None
    mine = len(range(rank, manifest.n_shards, world_size))
    bar = tqdm(total=mine * shard_rows * ctx_len, unit="tok", desc="caching", disable=not progress)
    bar.update((mine - len(todo)) * shard_rows * ctx_len)
    try:
        for i in todo:
            lo, hi = i * shard_rows, min((i + 1) * shard_rows, n_rows)
            parts = []
            for b0 in range(lo, hi, batch_size):
                b1 = min(b0 + batch_size, hi)
                ids = torch.from_numpy(np.ascontiguousarray(tokens[b0:b1])).long().to(subject.device)
                parts.append(sparse_encode(sae, hooked_output(subject, hook, ids), b0, first_pos))
                bar.update((b1 - b0) * ctx_len)
            arrays = {k: np.concatenate([p[k] for p in parts]) for k in SHARD_FIELDS}
            if counts is not None:
                counts += np.bincount(arrays["latent"], minlength=manifest.d_sae)
            writer.submit(_shard_path(shard_dir, i), arrays)
        writer.join()
    finally:
        bar.close()
    wait()  # every rank's shards are written
    if rank == 0:
        if not (cache_dir / "index" / "ptr.npy").exists():
            build_index(cache_dir, manifest, counts=counts)
        elif not (cache_dir / "stats.npz").exists():  # stopped between the index and the stats
            _write_stats(cache_dir, manifest, 50)
    wait()
    return CacheReader(cache_dir)


def _shard_path(shard_dir: Path, i: int) -> Path:
    return shard_dir / f"shard_{i:05d}.npz"


def _prepare(cache_dir: Path, manifest: CacheManifest, tokens: np.ndarray, clean: bool = True) -> None:
    """Create the cache folder (``clean``: removing what a killed write left), or check that an
    existing one was made with the same settings."""
    shard_dir = cache_dir / "shards"
    shard_dir.mkdir(parents=True, exist_ok=True)
    for stale in sorted(cache_dir.rglob("*.tmp")) if clean else ():  # leftovers of an interrupted write (parents first)
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale)  # index.tmp/: a killed build_index
        elif os.path.lexists(stale):  # not inside a folder removed above
            stale.unlink()
    mpath = cache_dir / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        diff = {k: (old.get(k), v) for k, v in asdict(manifest).items() if old.get(k) != v}
        if diff:
            raise ValueError(
                f"The cache in {cache_dir} was made with other settings {diff} (old, new). Use a "
                "new run_dir, or delete that cache folder to rebuild it."
            )
        return
    _save_atomic(cache_dir / "tokens.npy", lambda p: np.save(open(p, "wb"), tokens.astype(np.int32)))
    _save_atomic(mpath, lambda p: p.write_text(json.dumps(asdict(manifest), indent=2)))


def _iter_shards(cache_dir: Path, manifest: CacheManifest) -> Iterable[dict[str, np.ndarray]]:
    for i in range(manifest.n_shards):
        path = _shard_path(cache_dir / "shards", i)
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in SHARD_FIELDS}
        except Exception as err:  # noqa: BLE001 - a damaged zip fails in many ways
            raise ValueError(f"Cache shard {path} is damaged ({type(err).__name__}: {err}): delete that file "
                             "and rerun notebooks/01_caching.ipynb; only that shard is computed again.") from None
        yield arrays


def build_index(cache_dir: Path, manifest: CacheManifest, top_n: int = 50,
                counts: np.ndarray | None = None) -> None:
    """Counting sort of all non-zeros by latent into memory-mapped arrays, then per-latent stats.

    One pass over the shards given per-latent ``counts``, else two; RAM: one shard + O(d_sae).
    """
    d = manifest.d_sae
    if counts is None:
        counts = np.zeros(d, np.int64)
        for s in _iter_shards(cache_dir, manifest):
            counts += np.bincount(s["latent"], minlength=d)
    ptr = np.zeros(d + 1, np.int64)
    np.cumsum(counts, out=ptr[1:])
    idx_dir = cache_dir / "index"
    tmp_dir = cache_dir / "index.tmp"
    tmp_dir.mkdir(exist_ok=True)
    n = int(ptr[-1])
    flat = np.lib.format.open_memmap(tmp_dir / "flat.npy", "w+", np.int64, (max(n, 1),))
    value = np.lib.format.open_memmap(tmp_dir / "value.npy", "w+", np.float16, (max(n, 1),))
    cursor = ptr[:-1].copy()
    key_dtype = np.uint16 if d <= 1 << 16 else np.int32  # 16-bit keys get numpy's radix sort
    for s in _iter_shards(cache_dir, manifest):
        order = np.argsort(s["latent"].astype(key_dtype), kind="stable")
        lat = s["latent"][order]
        c = np.bincount(lat, minlength=d)
        starts = np.cumsum(c) - c
        dest = cursor[lat] + (np.arange(lat.size) - starts[lat])
        flat[dest] = s["row"][order].astype(np.int64) * manifest.ctx_len + s["pos"][order]
        value[dest] = s["value"][order]
        cursor += c
    del flat, value  # unmapped, not msync'ed: the pages are in the page cache for any reader
    np.save(tmp_dir / "ptr.npy", ptr)
    if idx_dir.exists():  # ptr.npy first: a half-removed index/ never reads as finished
        (idx_dir / "ptr.npy").unlink(missing_ok=True)
        shutil.rmtree(idx_dir)
    os.replace(tmp_dir, idx_dir)
    _write_stats(cache_dir, manifest, top_n)


def _descending_key(v16: np.ndarray) -> np.ndarray:
    """uint16 keys that sort float16 values as ``argsort(-v)`` does: descending, -0 == 0, NaN last."""
    h = np.where(v16 == 0, np.uint16(0), v16.view(np.uint16))
    key = ~np.where(h & 0x8000, ~h, h | np.uint16(0x8000))  # ~(order-preserving map of the bits)
    key[np.isnan(v16)] = 0xFFFF
    return key


def _write_stats(cache_dir: Path, manifest: CacheManifest, top_n: int, chunk: int = 1 << 18) -> None:
    """Per-latent stats from the index, vectorised over blocks of <= ``chunk`` non-zeros.

    The top activations of a latent are its ``top_n`` largest values, ties to the earlier token.
    """
    reader = CacheReader(cache_dir, load_stats=False)
    d, ptr = manifest.d_sae, reader.ptr
    count = np.diff(ptr)
    max_act, mean_act, share = (np.zeros(d, np.float32) for _ in range(3))
    flat_tokens = reader.tokens.reshape(-1)
    j0 = 0
    while j0 < d:  # latents [j0, j1): at most `chunk` non-zeros (or one latent), 2**16 latents
        j1 = min(max(j0 + 1, int(np.searchsorted(ptr, ptr[j0] + chunk, "right")) - 1), j0 + (1 << 16))
        j = np.arange(j0, j1)[count[j0:j1] > 0]
        a, j0 = ptr[j0], j1
        if j.size == 0:
            continue
        v16 = np.asarray(reader._value[a:ptr[j1]])
        vals, c, starts = v16.astype(np.float32), count[j], ptr[j] - a
        max_act[j] = np.maximum.reduceat(vals, starts)
        mean_act[j] = np.add.reduceat(vals, starts, dtype=np.float64) / c
        seg = np.repeat(np.arange(j.size, dtype=np.uint16), c)
        order = np.lexsort((_descending_key(v16), seg))  # by latent, then value descending
        n = np.minimum(c, top_n)
        top_seg = np.repeat(np.arange(j.size, dtype=np.uint16), n)
        rank = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        flat = np.asarray(reader._flat[a:ptr[j1]])
        tok = flat_tokens[flat[order[np.repeat(starts, n) + rank]]]
        o = np.lexsort((tok, top_seg))  # runs of equal token ids within each latent
        tok, top_seg = tok[o], top_seg[o]
        run = np.flatnonzero(np.r_[True, (tok[1:] != tok[:-1]) | (top_seg[1:] != top_seg[:-1])])
        run_len = np.diff(np.r_[run, tok.size])
        first_run = np.flatnonzero(np.r_[True, top_seg[run][1:] != top_seg[run][:-1]])
        share[j] = np.maximum.reduceat(run_len, first_run) / n
    _save_atomic(cache_dir / "stats.npz", _npz_writer(
        {"count": count, "max_act": max_act, "mean_act": mean_act, "top_token_share": share,
         "n_tokens": np.array(manifest.n_cached_tokens)}))


class CacheReader:
    """Read a finished cache: tokens, per-latent activations and stats, all memory-mapped."""

    def __init__(self, cache_dir: str | os.PathLike, load_stats: bool = True) -> None:
        self.dir = Path(cache_dir)
        if not (self.dir / "index" / "ptr.npy").exists():
            raise FileNotFoundError(
                f"No finished cache in {self.dir}: run notebooks/01_caching.ipynb for this run dir "
                "(an interrupted cache resumes where it stopped)."
            )
        try:
            self.manifest = CacheManifest(**json.loads((self.dir / "manifest.json").read_text()))
            self.tokens: np.ndarray = np.load(self.dir / "tokens.npy", mmap_mode="r")
            self.ptr: np.ndarray = np.load(self.dir / "index" / "ptr.npy")
            self._flat = np.load(self.dir / "index" / "flat.npy", mmap_mode="r")
            self._value = np.load(self.dir / "index" / "value.npy", mmap_mode="r")
            self.stats: LatentStats | None = None
            if load_stats:
                with np.load(self.dir / "stats.npz") as z:
                    self.stats = LatentStats(**{k: z[k] for k in ("count", "max_act", "mean_act", "top_token_share")},
                                             n_tokens=int(z["n_tokens"]))
        except Exception as err:  # noqa: BLE001 - damaged .npy/.npz/json fail in many ways
            raise ValueError(f"The cache in {self.dir} is damaged ({type(err).__name__}: {err}): delete "
                             f"{self.dir / 'index'} and {self.dir / 'stats.npz'} and rerun "
                             "notebooks/01_caching.ipynb (the shards are reused).") from None
        if self.ptr.shape != (self.manifest.d_sae + 1,) or int(self.ptr[-1]) > len(self._flat):
            raise ValueError(f"The cache index in {self.dir / 'index'} does not fit its manifest: delete that "
                             "folder and rerun notebooks/01_caching.ipynb (the shards are reused).")

    @property
    def ctx_len(self) -> int:
        return self.manifest.ctx_len

    @property
    def d_sae(self) -> int:
        return self.manifest.d_sae

    def latent(self, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat token positions (row*ctx_len+pos) and values of every token where latent j fires."""
        if not 0 <= j < self.d_sae:
            raise IndexError(f"latent {j} out of range: this SAE has {self.d_sae} latents.")
        a, b = self.ptr[j], self.ptr[j + 1]
        return np.asarray(self._flat[a:b]), np.asarray(self._value[a:b], dtype=np.float32)

    def dense_row(self, row: int, j: int) -> np.ndarray:
        """Activation of latent j along one row (zeros where it is silent)."""
        flat, vals = self.latent(j)
        out = np.zeros(self.ctx_len, np.float32)
        mask = (flat // self.ctx_len) == row
        out[flat[mask] % self.ctx_len] = vals[mask]
        return out

    def top_windows(self, j: int, n: int = 10, width: int = 32) -> list[Window]:
        """The n most activating windows of latent j (one per row, ``records.Window``), peak
        ~3/4 in, BOS left out."""
        flat, vals = self.latent(j)
        if flat.size == 0:
            return []
        rows = flat // self.ctx_len
        # One window per row: the row's strongest token.
        order = np.lexsort((-vals, rows))
        first = np.ones(order.size, bool)
        first[1:] = rows[order][1:] != rows[order][:-1]
        best = order[first]
        best = best[np.argsort(-vals[best], kind="stable")][:n]
        wins = []
        for i in best:
            row, pos = int(rows[i]), int(flat[i] % self.ctx_len)
            lo = self.manifest.first_pos if self.ctx_len - self.manifest.first_pos >= width else 0
            start = min(max(pos - (3 * width) // 4, lo), max(self.ctx_len - width, 0))
            dense = self.dense_row(row, j)[start:start + width]
            toks = self.tokens[row, start:start + width]
            acts = tuple(float(a) for a in dense)
            wins.append(Window(latent=j, row=row, start=start, token_ids=tuple(int(t) for t in toks),
                               acts=acts, max_act=max(acts), quantile=None, kind=ACTIVATING))
        return wins


def for_run(cfg, subject, sae, packed, progress: bool = True, **ranks) -> CacheReader:
    """Cache the run's first ``n_tokens`` of the packed corpus into ``<run>/cache`` (resumable;
    ``ranks``: ``build_cache``'s rank, world_size and barrier)."""
    rows = packed.tokens[: cfg.n_tokens // cfg.ctx_len]
    return build_cache(cfg.path.cache_dir, subject, sae, cfg.hook, rows, sae_id=cfg.sae,
                       corpus_hash=packed.content_hash, first_pos=packed.first_pos,
                       batch_size=cfg.batch_size, shard_rows=cfg.shard_rows, progress=progress, **ranks)
