"""Hungarian alignment (autointerp.alignment): dense vs sparse, time and peak memory, side by side.

Each case runs in a fresh child process, so its peak RSS (``ru_maxrss``) is its own: Python, torch,
the two [n, d] input matrices (the "inputs" column is the RSS just before matching) and the match.
Cases:
- random: two independent sets of random unit vectors (the hardest case for the sparse solver:
  every cosine is near 0, nothing stands out);
- structured: B holds noisy copies (cosine ~0.9) of a random 70% of A's rows plus 30% fresh rows,
  shuffled, as for two SAEs that share most latents; "recovered" is the share of the planted
  pairs matched to their own copy, and share>0.7 should come out near 0.70;
- decoders (``--decoders RUN_DIR``, after chapter 09): real SAE decoders of that run's family:
  adjacent residual layers, adjacent MLP layers, and the run-layer SAE against its twin (another
  seed), at the family's width.
Ratios are sparse / dense on the same inputs in this run.

    python bench/alignment.py [--sizes 4096 16384] [--big 65536 131072] [--quick] [--decoders RUN_DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import torch

SHARED, NOISE = 0.7, 0.5  # structured case: share of A copied into B, noise norm per copy


def make(case: str, n: int, d: int, seed: int):
    """Inputs (A, B) and, for the structured case, the planted partner of each A row (-1: none)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, d, generator=gen)
    A /= A.norm(dim=1, keepdim=True)
    if case == "random":
        B = torch.randn(n, d, generator=gen)
        return A, B / B.norm(dim=1, keepdim=True), None
    shared = torch.randperm(n, generator=gen)[:int(SHARED * n)]
    B = torch.randn(n, d, generator=gen)
    B /= B.norm(dim=1, keepdim=True)
    B[:len(shared)] = A[shared] + NOISE * B[:len(shared)]
    B /= B.norm(dim=1, keepdim=True)
    perm = torch.randperm(n, generator=gen)  # B row j is former row perm[j]
    B = B[perm]
    partner = np.full(n, -1)
    where = np.argsort(perm.numpy())  # former row k now sits at where[k]
    partner[shared.numpy()] = where[:len(shared)]
    return A, B, partner


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def decoders(pair: list[str]):
    """Unit decoder rows of two saved SAEs (sae-lens folders)."""
    from autointerp import alignment, saes

    A, B = (alignment.directions(saes.load(p)).detach() for p in pair)
    return A, B, None


def decoder_pairs(run_dir: str) -> list[tuple[str, list[str]]]:
    """(label, [folder A, folder B]) for the family in ``<run_dir>/layers`` (chapter 09)."""
    from pathlib import Path

    root = Path(run_dir) / "layers"
    names = {p.name for p in root.iterdir() if (p / "sae_weights.safetensors").exists()} if root.exists() else set()
    if not names:
        raise SystemExit(f"--decoders {run_dir}: no trained family in {root}; run notebooks/09_alignment.ipynb first.")
    layers = sorted(int(n.removeprefix("resid")) for n in names if n.startswith("resid"))
    pairs = [(f"{k}{a}-{k}{a + 1}", [str(root / f"{k}{a}"), str(root / f"{k}{a + 1}")])
             for k in ("resid", "mlp") for a in layers[1:2] if f"{k}{a + 1}" in names]
    if "twin" in names and len(layers) > 1:  # the twin sits at the run's layer, one above the family's first
        pairs.append((f"{layers[1]}-twin", [str(root / f"resid{layers[1]}"), str(root / "twin")]))
    return pairs


def child(spec: dict) -> None:
    from autointerp import alignment

    torch.set_num_threads(spec["threads"])
    A, B, partner = (decoders(spec["pair"]) if spec["case"] == "decoders"
                     else make(spec["case"], spec["n"], spec["d"], spec["seed"]))
    base = rss_mb()
    t0 = time.perf_counter()
    M = alignment.match(A, B, method=spec["method"], m=spec["m"], block=spec["block"],
                        precision=spec["precision"], progress=False)
    seconds = time.perf_counter() - t0
    out = {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "inputs_mb": base, "cost": M.total_cost, "m": M.m, "mean_sim": float(M.similarity.mean()),
           "share_07": M.share_above(0.7)}
    if partner is not None:
        planted = partner[M.rows] >= 0
        out["recovered"] = float(np.mean(M.cols[planted] == partner[M.rows][planted]))
    print(json.dumps(out))


def run(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{spec} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


HEADER = (f"{'case':<13} {'n':>7} {'method':<6} {'precision':<9} {'m':>3} {'time s':>7} "
          f"{'peak MB':>8} {'inputs MB':>9} {'total cost':>12} {'mean cos':>8} {'share>0.7':>9} "
          f"{'recovered':>9} {'cost ratio':>10} {'time ratio':>10}")


def row(spec: dict, r: dict, dense: dict | None) -> str:
    ratio = (f"{r['cost'] / dense['cost']:10.6f} {r['seconds'] / dense['seconds']:10.3f}"
             if dense and spec["method"] == "sparse" else f"{'':>10} {'':>10}")
    rec = f"{r['recovered']:9.4f}" if "recovered" in r else f"{'':>9}"
    return (f"{spec.get('label', spec['case']):<13} {spec['n']:>7} {spec['method']:<6} "
            f"{spec['precision'] if spec['method'] == 'sparse' else '-':<9} {r['m'] or '-':>3} "
            f"{r['seconds']:7.1f} {r['peak_mb']:8.0f} {r['inputs_mb']:9.0f} {r['cost']:12.3f} "
            f"{r['mean_sim']:8.4f} {r['share_07']:9.4f} {rec} {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="*", default=[4096, 16384], help="dense and sparse")
    ap.add_argument("--big", type=int, nargs="*", default=[65536, 131072], help="sparse only")
    ap.add_argument("--cases", nargs="*", default=["random", "structured"])
    ap.add_argument("--precisions", nargs="*", default=["float32", "bfloat16"])
    ap.add_argument("--big-float32-max", type=int, default=65536,
                    help="float32 sparse runs only up to this size in --big (it is the slow one)")
    ap.add_argument("--dense-max", type=int, default=16384, help="skip dense above this size")
    ap.add_argument("--d", type=int, default=576)
    ap.add_argument("--m", type=int, default=32)
    ap.add_argument("--block", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="small sizes only: a smoke check")
    ap.add_argument("--decoders", metavar="RUN_DIR", help="also match the real SAE decoders of RUN_DIR/layers")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.sizes, args.big = [1024, 2048], [8192]

    base = {"d": args.d, "m": args.m, "block": args.block, "threads": args.threads, "seed": args.seed}
    from autointerp.alignment import fastest_precision

    torch.set_num_threads(args.threads)
    print(f"d={args.d}, m={args.m}, block={args.block}, {args.threads} torch threads, "
          f"load average {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}; "
          f"precision='auto' (the default of alignment.match) picks {fastest_precision(args.d)} on this machine")
    print(HEADER)
    targets = []
    for case in args.cases:
        for n in args.sizes:
            dense = None
            if n <= args.dense_max:
                spec = {**base, "case": case, "n": n, "method": "dense", "precision": "float32"}
                dense = run(spec)
                print(row(spec, dense, None), flush=True)
            for precision in args.precisions:
                spec = {**base, "case": case, "n": n, "method": "sparse", "precision": precision}
                print(row(spec, run(spec), dense), flush=True)
        for n in args.big:
            for precision in args.precisions:
                if precision == "float32" and n > args.big_float32_max:
                    continue
                spec = {**base, "case": case, "n": n, "method": "sparse", "precision": precision}
                r = run(spec)
                print(row(spec, r, None), flush=True)
                if n == 65536:
                    targets.append((case, precision, r))
    for label, pair in (decoder_pairs(args.decoders) if args.decoders else []):
        from safetensors import safe_open

        with safe_open(f"{pair[0]}/sae_weights.safetensors", "pt") as f:
            n, d = f.get_slice("W_dec").get_shape()
        common = {**base, "case": "decoders", "label": label, "pair": pair, "n": n, "d": d}
        dense = run({**common, "method": "dense", "precision": "float32"})
        print(row({**common, "method": "dense", "precision": "float32"}, dense, None), flush=True)
        for precision in args.precisions:
            spec = {**common, "method": "sparse", "precision": precision}
            print(row(spec, run(spec), dense), flush=True)
    for case, precision, r in targets:
        ok = r["seconds"] <= 60 and r["peak_mb"] <= 4096
        print(f"TARGET 65,536 sparse {case} {precision}: {r['seconds']:.1f} s (<= 60), "
              f"{r['peak_mb'] / 1024:.2f} GB peak RSS (<= 4): {'met' if ok else 'MISSED'}")
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in __import__('os').getloadavg())}")


if __name__ == "__main__":
    main()
