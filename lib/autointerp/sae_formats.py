"""SAE disk formats besides sae-lens's own, read into sae-lens SAEs (``saes.load`` picks by weight file).

- sparsify (EleutherAI): ``cfg.json`` + ``sae.safetensors``, TopK autoencoders.
- Gemma Scope (Google DeepMind): ``params.npz`` with ``W_enc`` [d_in, d_sae], ``W_dec`` [d_sae, d_in],
  ``b_enc``, ``b_dec`` and ``threshold``, JumpReLU; what ``hf download google/gemma-scope-9b-pt-res
  --include "layer_20/width_16k/average_l0_68/*"`` puts in a folder. sae-lens reads these from the hub
  only; here a local folder loads the same way, configured as sae-lens configures the releases.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

SPARSIFY_WEIGHTS = "sae.safetensors"
GEMMA_SCOPE_WEIGHTS = "params.npz"
GEMMA_SCOPE_KEYS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def sparsify_loader(path, device: str = "cpu", cfg_overrides: dict | None = None):
    """sae-lens disk converter for EleutherAI sparsify folders, with two corrections.

    sae-lens 6.54's ``sparsify_disk_loader`` transposes ``W_dec``, which sparsify already stores as
    [num_latents, d_in] (sae-lens's own layout), and skips subtracting ``b_dec`` before encoding
    whenever ``normalize_decoder`` is set, while sparsify subtracts it for every non-transcoder.
    We keep its config translation and read the weights as sparsify's ``encode``/``decode`` use them.
    """
    from safetensors.torch import load_file
    from sae_lens.loading.pretrained_sae_loaders import get_sparsify_config_from_disk

    cfg = get_sparsify_config_from_disk(path, device, cfg_overrides)
    raw_cfg = json.loads((Path(path) / "cfg.json").read_text())
    if raw_cfg.get("activation", "topk") != "topk" or raw_cfg.get("transcode", False):
        raise ValueError(f"{path}: only sparsify TopK autoencoders are supported "
                         f"(this one has activation={raw_cfg.get('activation')!r}, "
                         f"transcode={raw_cfg.get('transcode', False)}).")
    cfg["apply_b_dec_to_input"] = True
    dtype = getattr(torch, str(cfg.get("dtype", "float32")).removeprefix("torch."))
    w = load_file(str(Path(path) / SPARSIFY_WEIGHTS), device=device)
    state = {"W_enc": w["encoder.weight"].T.contiguous(), "b_enc": w["encoder.bias"],
             "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    return cfg, {k: v.to(dtype) for k, v in state.items()}


def gemma_scope_hook_name(path: str | Path) -> str:
    """The TransformerLens hook a Gemma Scope folder's SAE reads, from its path as the releases name
    them (``...-res/layer_20/...``: ``blocks.20.hook_resid_post``; ``-mlp``: ``hook_mlp_out``); ''
    when the path does not say (the run's hook setting decides where it is applied either way)."""
    text = str(path)
    layer = re.search(r"layer_(\d+)", text)
    if not layer:
        return ""
    kind = "hook_mlp_out" if re.search(r"(^|[-_/])mlp([-_/]|$)", text) else "hook_resid_post"
    return f"blocks.{layer.group(1)}.{kind}"


def from_gemma_scope_state(state: dict[str, torch.Tensor], *, hook_name: str = "", model_name: str = ""):
    """An sae-lens ``JumpReLUSAE`` from Gemma Scope's tensors, configured as sae-lens configures the
    Gemma Scope releases (no input centring, no activation normalisation, float32)."""
    from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    d_in, d_sae = state["W_enc"].shape
    cfg = JumpReLUSAEConfig(d_in=int(d_in), d_sae=int(d_sae), dtype="float32", apply_b_dec_to_input=False,
                            normalize_activations="none",
                            metadata=SAEMetadata(hook_name=hook_name, model_name=model_name, prepend_bos=True,
                                                 context_size=1024, dataset_path="monology/pile-uncopyrighted"))
    sae = JumpReLUSAE(cfg)
    sae.load_state_dict({k: state[k].float() for k in GEMMA_SCOPE_KEYS})
    return sae.eval()


def load_gemma_scope(folder: str | Path):
    """A Gemma Scope ``params.npz`` folder as an sae-lens ``JumpReLUSAE`` (float32, on the CPU)."""
    path = Path(folder) / GEMMA_SCOPE_WEIGHTS
    with np.load(path) as data:
        state = {("W_" + k[2:] if k.startswith("w_") else k): torch.from_numpy(np.asarray(data[k])) for k in data}
    missing = [k for k in GEMMA_SCOPE_KEYS if k not in state]
    if missing:
        raise ValueError(f"{path} is not a Gemma Scope SAE: it lacks {missing} (has {sorted(state)}).")
    if "scaling_factor" in state and not torch.allclose(state["scaling_factor"], torch.ones(1)):
        raise ValueError(f"{path} has a fine-tuning scaling factor; only plain Gemma Scope SAEs are supported.")
    return from_gemma_scope_state(state, hook_name=gemma_scope_hook_name(Path(folder).resolve()))
