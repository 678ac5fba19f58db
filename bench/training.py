"""Training several SAEs together (one forward pass per batch feeds every hook) vs one by one.

Prints, measured side by side in one run on the same tokens and settings, the seconds of
``saes.train_many`` for N SAEs at N hooks, the seconds of ``saes.train_topk`` for each of them in
turn, their ratio (together / one by one; below 1 means training together is faster), and each
SAE's held-out FVU both ways (they must agree: the same training, only the activations shared).

    python bench/training.py [--hooks model.layers.7 model.layers.8 model.layers.8.mlp] [--width 512]
                             [--k 16] [--tokens 32768]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hooks", nargs="+", default=["model.layers.7", "model.layers.8", "model.layers.9",
                                                   "model.layers.8.mlp"])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--ctx", type=int, default=64)
    ap.add_argument("--batch-tokens", type=int, default=256)
    args = ap.parse_args()

    import torch

    from autointerp import corpus, models, saes

    torch.set_num_threads(2)
    subject = models.load("embedded")
    rows = corpus.load_and_pack("stdlib", subject.tokenizer, args.ctx, args.tokens, 0).tokens
    specs = {f"sae{i}": (h, args.width) for i, h in enumerate(args.hooks)}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        together = saes.train_many(subject, rows, specs, Path(tmp) / "together", k=args.k,
                                   batch_tokens=args.batch_tokens, progress=False)
        t_together = time.perf_counter() - t0
        alone = {}
        t0 = time.perf_counter()
        for n, (hook, width) in specs.items():
            alone[n] = saes.train_topk(subject, rows, hook, Path(tmp) / "alone" / n, width=width, k=args.k,
                                       batch_tokens=args.batch_tokens, progress=False)
        t_alone = time.perf_counter() - t0
    print(f"{len(specs)} TopK SAEs (width {args.width}, k {args.k}) on {rows.size:,} tokens, batch {args.batch_tokens}:")
    for n, (hook, _) in specs.items():
        print(f"  {hook:24s} FVU together {together[n].fvu:.4f}  one by one {alone[n].fvu:.4f}")
    print(f"together {t_together:.1f} s, one by one {t_alone:.1f} s: ratio together / one by one = "
          f"{t_together / t_alone:.3f}")


if __name__ == "__main__":
    main()
