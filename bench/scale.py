"""Caching throughput at the full profile's shapes, and an estimate of the paper-scale run from it.

Throughput does not need trained weights: the model is ``Gemma2ForCausalLM`` at Gemma-2-9B's
shapes (hidden 3584, MLP 14336, 16 heads, vocab 256k) with randomly initialised weights and only
``--layers`` blocks (the forward stops at the hooked layer, so its cost is per block); the SAE is a
JumpReLU at Gemma Scope's 131k width. Measured side by side in one run: tokens/s of the forward
per block, of the SAE encode and sparse write, and of the whole caching step for a slice of rows.
From these rates and the full profile's settings it prints the paper-scale estimate: hours to
cache 10M tokens at layer 32, and LLM calls and prompt tokens per 1,000 latents (tokens per call
measured with bench/prompt_tokens.py's code; cost only at a price you give).

    python bench/scale.py                       # CPU: 2 blocks, 2 rows of 256 tokens
    python bench/scale.py --device cuda --dtype bfloat16 --layers 4 --rows 32
"""
from __future__ import annotations

import argparse
import time

import torch

from autointerp import config, sae_formats, synthetic
from autointerp.cache import sparse_encode
from autointerp.models import SubjectModel, hooked_output


def timed(fn, device: str, repeat: int = 2) -> float:
    fn()  # warm-up
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", help="bfloat16 on a GPU (the full profile's)")
    ap.add_argument("--layers", type=int, default=2, help="blocks built (the hook is the last)")
    ap.add_argument("--rows", type=int, default=2)
    ap.add_argument("--ctx-len", type=int, default=256)
    ap.add_argument("--width", type=int, default=131072)
    ap.add_argument("--usd-per-mtok", type=float, default=None, help="prompt price, for a cost estimate")
    args = ap.parse_args()
    full = config.resolve("full")
    dt = getattr(torch, args.dtype)
    from transformers import AutoTokenizer

    from autointerp.models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_model_dir()))  # nnsight's wrapper wants one; ids are random
    shape = {**synthetic.GEMMA2_9B, "num_hidden_layers": args.layers}
    t0 = time.perf_counter()
    model = synthetic.gemma2_model(tok, dtype=args.dtype, device=args.device, **shape)
    build_s = time.perf_counter() - t0
    subject = SubjectModel(hf=model, tokenizer=tok, name="random Gemma-2-9B shapes", source="bench")
    hook = f"model.layers.{args.layers - 1}"
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (args.rows, args.ctx_len), generator=gen).to(args.device)
    d = shape["hidden_size"]
    w_dec = torch.randn(args.width, d, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    hidden = hooked_output(subject, hook, ids)
    # thresholds at mean + 3.3 sd of each latent's pre-activation: ~64 of 131k fire per token, as Gemma Scope's L0
    pre = hidden.reshape(-1, d).float().cpu() @ w_dec.T
    threshold = pre.mean(0) + 3.3 * pre.std(0)
    del pre
    sae = sae_formats.from_gemma_scope_state(
        {"W_enc": w_dec.T.contiguous(), "W_dec": w_dec, "b_enc": torch.zeros(args.width), "b_dec": torch.zeros(d),
         "threshold": threshold}, hook_name=f"blocks.{args.layers - 1}.hook_resid_post")
    sae = sae.to(device=args.device, dtype=dt)
    del w_dec
    n_tok = args.rows * args.ctx_len
    fwd_s = timed(lambda: hooked_output(subject, hook, ids), args.device)
    enc_s = timed(lambda: sparse_encode(sae, hidden, 0, 1), args.device)
    both_s = timed(lambda: sparse_encode(sae, hooked_output(subject, hook, ids), 0, 1), args.device)
    nnz = len(sparse_encode(sae, hidden, 0, 1)["latent"]) / n_tok
    per_block = fwd_s / args.layers
    layer = int(full.hook.rsplit(".", 1)[1])
    step_full = per_block * (layer + 1) + enc_s  # forward to layer 32, then the SAE
    print(f"device {args.device}, {args.dtype}; Gemma-2-9B shapes with {args.layers} of 42 blocks "
          f"(built in {build_s:.0f} s); {args.rows} x {args.ctx_len} tokens; JumpReLU width {args.width:,} "
          f"(L0 {nnz:.0f})")
    print(f"  forward to {hook}: {n_tok / fwd_s:,.0f} tok/s ({per_block * 1e3 / n_tok * 1e3:.1f} ms per 1k tokens per block)")
    print(f"  SAE encode + sparse codes: {n_tok / enc_s:,.0f} tok/s")
    print(f"  both, as caching runs them: {n_tok / both_s:,.0f} tok/s (x{(fwd_s + enc_s) / both_s:.2f} of the sum of the parts)")
    hours = full.n_tokens * step_full / n_tok / 3600
    print(f"paper scale (full profile): {full.n_tokens:,} tokens at {full.hook} (33 blocks): "
          f"~{n_tok / step_full:,.0f} tok/s here -> {hours:,.1f} h on one such device; "
          f"N devices with autointerp.distributed: / N")
    s = {k: config.settings(k, "full") for k in ("explain", "detection", "fuzzing", "simulation", "scoring")}
    per_prompt = 5
    calls = {  # per latent, the full profile's sizes, 5 excerpts per judge prompt
        "explain (chat + contrastive)": 2,
        "detection": -(-(s["detection"]["n_pos"] + s["detection"]["n_neg"]) // per_prompt),
        "fuzzing (default + active)": 2 * -(-(s["fuzzing"]["n_pos"] + s["fuzzing"]["n_neg"]) // per_prompt),
        "intruder": s["detection"]["n_trials"],
        "simulation (per excerpt)": s["simulation"]["n_pos"] + s["simulation"]["n_neg"],
    }
    from prompt_tokens import detection_tokens  # bench/prompt_tokens.py, beside this script

    judge = detection_tokens(tok, s["detection"]["n_pos"], s["detection"]["n_neg"], per_prompt)
    tokens_per_call = judge["tokens"] / judge["prompts"]  # measured on this tokenizer, not a constant
    total = sum(calls.values())
    print("LLM calls per 1,000 latents (full profile sizes; simulation counted for every latent, the full profile runs it on half):")
    for k, v in calls.items():
        print(f"  {k:<30} {v * 1000:>8,}")
    mtok = total * 1000 * tokens_per_call / 1e6
    cost = f", ${mtok * args.usd_per_mtok:,.2f} at ${args.usd_per_mtok}/M" if args.usd_per_mtok else ""
    print(f"  {'all':<30} {total * 1000:>8,} calls, ~{mtok:,.1f}M prompt tokens (~{tokens_per_call:.0f} per call){cost}")


if __name__ == "__main__":
    main()
