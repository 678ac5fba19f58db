"""Prompt tokens per latent for the detection judge, and how much of them a prefix cache reuses.

The judge prompts of one latent are built by the scorer's own ``prompts`` (the exact messages sent),
on the full profile's sizes (50 activating + 50 non-activating 32-token excerpts from the corpus),
and counted with the embedded model's tokenizer and chat template. Every prompt of a run starts
with the same system message, and one latent's prompts share it and the explanation: a server with
prefix caching (vLLM's automatic prefix caching, llama.cpp's prompt cache, hosted APIs' cached
input) computes that shared prefix once per latent. Ratios are against delphi's layout of 5
excerpts per prompt, measured side by side in this run.

    python bench/prompt_tokens.py [--n-pos 50] [--n-neg 50] [--layouts 1 5 10 20]
"""
from __future__ import annotations

import argparse

import numpy as np

from autointerp import corpus, examples, models
from autointerp.records import Window
from autointerp.scorers.detection import DetectionScorer

EXPLANATION = "Python keywords that open a block, such as def, class, if and for, at the start of a line"


def windows(tokens: np.ndarray, n_pos: int, n_neg: int, width: int = 32) -> list[Window]:
    rows = iter(range(len(tokens)))
    out = []
    for i in range(n_pos + n_neg):
        r = next(rows)
        ids = tuple(int(t) for t in tokens[r, 1:1 + width])
        act = i < n_pos
        acts = tuple(1.0 if act and j == width // 2 else 0.0 for j in range(width))
        out.append(Window(latent=0, row=r, start=1, token_ids=ids, acts=acts, max_act=max(acts),
                          quantile=(i % 10) if act else None, kind="activating" if act else "random"))
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def measure(scorer: DetectionScorer, tok, exs: list[Window]) -> dict:
    prompts = scorer.prompts(0, EXPLANATION, exs)
    texts = [tok.apply_chat_template([{"role": r, "content": c} for r, c in p.messages], tokenize=False,
                                     add_generation_prompt=True) for p in prompts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    total = sum(map(len, ids))
    shared = min(common_prefix(ids[0], x) for x in ids[1:]) if len(ids) > 1 else len(ids[0])
    return {"prompts": len(ids), "tokens": total, "shared_prefix": shared,
            "uncached": total - shared * (len(ids) - 1)}


def detection_tokens(tok, n_pos: int = 50, n_neg: int = 50, per_prompt: int = 5) -> dict:
    """``measure`` for one latent's detection prompts on corpus excerpts (the full profile's sizes)."""
    packed = corpus.load_and_pack("stdlib", tok, 64, 64 * (n_pos + n_neg + 1), 0)
    scorer = DetectionScorer(client=None, decode=examples.TokenDecoder(tok), n_per_prompt=per_prompt)
    return measure(scorer, tok, windows(packed.tokens, n_pos, n_neg))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-pos", type=int, default=50)
    ap.add_argument("--n-neg", type=int, default=50)
    ap.add_argument("--layouts", type=int, nargs="*", default=[1, 5, 10, 20])
    args = ap.parse_args()
    subject = models.load("embedded")
    tok = subject.tokenizer
    rows = {n: detection_tokens(tok, args.n_pos, args.n_neg, n) for n in args.layouts}
    ref = rows.get(5) or next(iter(rows.values()))
    print(f"detection judge, one latent: {args.n_pos} + {args.n_neg} excerpts of 32 tokens "
          f"(tokens: {tok.name_or_path.rsplit('/', 1)[-1]}'s tokenizer and chat template)")
    print(f"{'per prompt':>10} {'prompts':>8} {'tokens':>8} {'x 5/prompt':>10} {'shared prefix':>13} "
          f"{'uncached':>9} {'x 5/prompt':>10}")
    for n, r in rows.items():
        print(f"{n:>10} {r['prompts']:>8} {r['tokens']:>8} {r['tokens'] / ref['tokens']:>10.2f} "
              f"{r['shared_prefix']:>13} {r['uncached']:>9} {r['uncached'] / ref['uncached']:>10.2f}")
    print("uncached: the tokens a prefix-caching server computes (the shared prefix once per latent).")


if __name__ == "__main__":
    main()
