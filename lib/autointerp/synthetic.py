"""Randomly initialised stand-ins in the full profile's real formats, made offline.

- ``gemma2_folder``: a causal LM with the Gemma-2 architecture (``Gemma2ForCausalLM``: soft-capped
  attention and logits, sliding-window layers, post-MLP norms), saved as a local Hugging Face
  folder; small by default, or at Gemma-2-9B's shapes with fewer layers (``bench/scale.py``).
- ``gemma_scope_sae``: a JumpReLU SAE laid out as Gemma Scope publishes it (``params.npz`` with
  ``W_enc`` [d_in, d_sae], ``W_dec``, ``b_enc``, ``b_dec``, ``threshold``) and as an sae-lens folder
  (``cfg.json`` + ``sae_weights.safetensors``, the config sae-lens builds for Gemma Scope). Its
  thresholds are set from the model's own activations so each latent fires on about
  ``target_rate`` of tokens, as a trained one does.

Throughput does not need trained weights, and code paths do not need meaningful latents: these are
how the tests run every chapter on the full profile's formats without the hub, and how the bench
measures caching at full shapes. Nothing here is trained; no number it gives is a finding.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch

from . import sae_formats, saes

# Gemma-2-9B's shapes (its config.json); bench/scale.py keeps them and cuts the layer count
GEMMA2_9B = dict(hidden_size=3584, intermediate_size=14336, num_attention_heads=16, num_key_value_heads=8,
                 head_dim=256, vocab_size=256000, num_hidden_layers=42)
TINY = dict(hidden_size=64, intermediate_size=256, num_attention_heads=2, num_key_value_heads=1,
            head_dim=32, num_hidden_layers=6)


def gemma2_model(tokenizer, *, seed: int = 0, dtype: str = "float32", device: str = "cpu", **shape):
    """A randomly initialised ``Gemma2ForCausalLM`` (``TINY`` shapes and the tokenizer's vocabulary
    unless given), its special tokens the tokenizer's, built on ``device``."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    tok = tokenizer
    dims = {**TINY, "vocab_size": len(tok), **shape}
    cfg = Gemma2Config(**dims, max_position_embeddings=8192, sliding_window=4096,
                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
                       attn_implementation="eager", tie_word_embeddings=True)
    torch.manual_seed(seed)
    with torch.device(device):
        return Gemma2ForCausalLM(cfg).to(getattr(torch, dtype)).eval()


def gemma2_folder(out: str | Path, *, tokenizer_from: str | Path | None = None, seed: int = 0,
                  dtype: str = "float32", **shape) -> Path:
    """Save ``gemma2_model`` with its tokenizer (the embedded model's unless ``tokenizer_from``) as
    an HF folder; returns it."""
    from transformers import AutoTokenizer

    from .models import embedded_model_dir

    tok = AutoTokenizer.from_pretrained(str(tokenizer_from or embedded_model_dir()))
    model = gemma2_model(tok, seed=seed, dtype=dtype, **shape)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "autointerp_source.json").write_text(json.dumps({"synthetic": "random Gemma-2", "seed": seed}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def transformer_lens_hook(hook: str) -> str:
    """The TransformerLens hook name Gemma Scope's configs give for one of our module paths
    (``sae_formats.gemma_scope_hook_name`` reads it off a release folder's path instead)."""
    from .models import layer_of

    layer = layer_of(hook)
    if hook == f"model.layers.{layer}":
        return f"blocks.{layer}.hook_resid_post"
    if hook in (f"model.layers.{layer}.post_feedforward_layernorm", f"model.layers.{layer}.mlp"):
        return f"blocks.{layer}.hook_mlp_out"
    raise ValueError(f"hook {hook!r}: Gemma Scope has residual and MLP-output SAEs only.")


def gemma_scope_sae(subject, hook: str, tokens: np.ndarray, out: str | Path, *, width: int,
                    target_rate: float = 0.02, seed: int = 0, npz: bool = True) -> Path:
    """A JumpReLU SAE for ``hook`` in Gemma Scope's layout, saved as an sae-lens folder ``out``
    (and, with ``npz``, Gemma Scope's own ``params.npz`` beside it). Decoder rows are random unit
    vectors, the encoder their transpose (Gemma Scope's initialisation), ``b_dec`` the activations'
    mean; each latent's threshold is the ``1 - target_rate`` quantile of its pre-activation on
    ``tokens`` (rows of token ids), so the SAE is sparse on this model."""
    x = saes.hooked_activations(subject, hook, tokens)[:, 1:].reshape(-1, subject.hook_dim(hook)).float()
    gen = torch.Generator().manual_seed(seed)
    w_dec = torch.randn(width, x.shape[1], generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    b_dec = x.mean(0)
    pre = (x - b_dec) @ w_dec.T
    threshold = torch.quantile(pre, 1 - target_rate, dim=0).clamp_min(1e-3)
    w_enc = w_dec.T.contiguous()
    # Gemma Scope does not subtract b_dec before encoding (apply_b_dec_to_input False): fold it into b_enc
    state = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": -(b_dec @ w_enc), "b_dec": b_dec, "threshold": threshold}
    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if npz:
        np.savez(out / sae_formats.GEMMA_SCOPE_WEIGHTS, **{k: v.numpy() for k, v in state.items()})
    sae = sae_formats.from_gemma_scope_state(state, hook_name=transformer_lens_hook(hook), model_name=subject.name)
    saes._save(sae, out)
    return out
