"""Caching throughput and memory, measured side by side in one run.

Prints two ratios:
1. caching tokens/s / raw truncated-forward tokens/s on the same batches (target >= 0.95): the raw
   side is plain Hugging Face, forward stopped at the hooked layer by a hook that raises; the
   caching side is autointerp's whole path (nnsight forward stopped early, SAE encode, sparse
   shards written, per-latent index and stats built).
2. peak RSS of caching n and 10*n tokens, each in a fresh process (target <= 1.2).

    python bench/cache.py [--hook model.layers.8] [--width 2048] [--k 32] [--tokens 40960]
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


class _Stop(Exception):
    pass


def setup(args):
    from autointerp import corpus, models, saes
    from autointerp.config import settings

    subject = models.load("embedded")
    demo = settings("run", "demo")
    packed = corpus.load_and_pack("stdlib", subject.tokenizer, demo["ctx_len"], args.tokens, 0)
    # A random control SAE costs exactly what a trained one of the same shape costs to run.
    sae = saes.random_sae(subject.hook_dim(args.hook), args.width, args.k, hook=args.hook)
    return subject, sae, packed


def raw_forward(subject, hook: str, rows: np.ndarray, batch_size: int) -> float:
    """Seconds for plain HF forwards over the rows, stopped at the hook."""
    def stop(_m, _i, _o):
        raise _Stop
    handle = subject.module(hook).register_forward_hook(stop)
    t0 = time.perf_counter()
    try:
        with torch.inference_mode():
            for b0 in range(0, len(rows), batch_size):
                try:
                    subject.hf(torch.from_numpy(np.ascontiguousarray(rows[b0:b0 + batch_size])).long())
                except _Stop:
                    pass
    finally:
        handle.remove()
    return time.perf_counter() - t0


def cached(subject, sae, hook: str, rows: np.ndarray, batch_size: int, shard_rows: int) -> float:
    from autointerp import cache

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cache.build_cache(Path(tmp), subject, sae, hook, rows, sae_id="bench", corpus_hash="bench",
                          batch_size=batch_size, shard_rows=shard_rows, progress=False)
        return time.perf_counter() - t0


def rss_child(args) -> None:
    subject, sae, packed = setup(args)
    cached(subject, sae, args.hook, packed.tokens, args.batch_size, args.shard_rows)
    print(json.dumps({"maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hook", default="model.layers.8")
    ap.add_argument("--width", type=int, default=2048)  # the demo SAE
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=40_960, help="tokens per throughput pass")
    ap.add_argument("--rss-tokens", type=int, default=204_800, help="larger of the two RSS runs")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--shard-rows", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rss-child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.rss_child:
        rss_child(args)
        return

    subject, sae, packed = setup(args)
    rows = packed.tokens
    n_tok = rows.size
    cached(subject, sae, args.hook, rows[:32], args.batch_size, args.shard_rows)  # warm-up (nnsight)
    raw_forward(subject, args.hook, rows[:32], args.batch_size)
    raw_s, cache_s = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both sides alike
        raw_s.append(raw_forward(subject, args.hook, rows, args.batch_size))
        cache_s.append(cached(subject, sae, args.hook, rows, args.batch_size, args.shard_rows))
    raw_tps, cache_tps = n_tok / statistics.median(raw_s), n_tok / statistics.median(cache_s)
    print(f"tokens per pass: {n_tok:,} ({len(rows)} rows x {rows.shape[1]}), hook {args.hook}, "
          f"SAE {args.width} latents k={args.k}, {torch.get_num_threads()} threads")
    print(f"raw truncated forward : {raw_tps:8.0f} tok/s  (runs: {', '.join(f'{s:.1f}s' for s in raw_s)})")
    print(f"autointerp caching    : {cache_tps:8.0f} tok/s  (runs: {', '.join(f'{s:.1f}s' for s in cache_s)})")
    print(f"RATIO caching/raw throughput = {cache_tps / raw_tps:.3f}   (target >= 0.95)")

    rss = {}
    small, big = args.rss_tokens // 10, args.rss_tokens
    for n in (small, big):
        cmd = [sys.executable, __file__, "--rss-child", "--tokens", str(n), "--hook", args.hook,
               "--width", str(args.width), "--k", str(args.k), "--batch-size", str(args.batch_size),
               "--shard-rows", str(args.shard_rows)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rss[n] = json.loads(out)["maxrss_mb"]
        print(f"peak RSS caching {n:>9,} tokens: {rss[n]:7.0f} MB")
    print(f"RATIO peak RSS {big:,} / {small:,} tokens = {rss[big] / rss[small]:.3f}   (target <= 1.2)")


if __name__ == "__main__":
    main()
