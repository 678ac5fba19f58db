from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from autointerp import models, saes
from autointerp.paths import HubUnreachable, embedded_gguf
from conftest import random_topk_sae

PROMPT = ("The capital of France is Paris. The capital of Germany is Berlin. The capital of Italy "
          "is Rome.\ndef add(a, b):\n    return a + b\n\nfor i in range(10):\n    print(add(i, i))\n")


def test_embedded_model_matches_the_gguf(subject):
    d = subject.describe()
    assert (d["n_layers"], d["d_model"], d["vocab"]) == (30, 576, 49152)
    assert subject.hook_dim("model.layers.8") == 576
    assert subject.hook_dim("model.layers.8.mlp.act_fn") == 1536


GGUF_NAMES = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
              "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
              "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj",
              "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def gguf_state_dict(path, n_heads: int, n_kv_heads: int) -> dict[str, np.ndarray]:
    """The gguf's tensors dequantised with the gguf package alone, under Hugging Face names.

    llama.cpp's converter stores the q/k rows of each head in its rotary order (the two halves
    interleaved); this undoes that permutation."""
    import gguf

    def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
        return w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif t.name == "output.weight":
            out["lm_head.weight"] = w
        else:
            _, layer, kind, _ = t.name.split(".")
            if kind in ("attn_q", "attn_k"):
                w = unpermute(w, n_heads if kind == "attn_q" else n_kv_heads)
            out[f"model.layers.{layer}.{GGUF_NAMES[kind]}.weight"] = w
    return out


@pytest.mark.slow
def test_local_folder_loads_the_same_weights(subject):
    # The reference is independent of the converted folder and of transformers: the gguf's own
    # tensors, dequantised by the gguf package. Every tensor of the folder, loaded as a local
    # folder, must equal its gguf tensor exactly (the conversion stores the fp32 dequantisation),
    # so a stale or foreign folder, a missed tensor or a wrong q/k un-permutation fails here.
    local = models.load(subject.source)
    assert Path(local.source) == models.embedded_model_dir()
    cfg = local.hf.config
    ref = gguf_state_dict(embedded_gguf(), cfg.num_attention_heads, cfg.num_key_value_heads)
    got = {k: v.numpy() for k, v in local.hf.state_dict().items()}
    if "lm_head.weight" not in ref:  # tied embeddings: the gguf stores the matrix once
        assert cfg.tie_word_embeddings
        ref["lm_head.weight"] = ref["model.embed_tokens.weight"]
    assert set(got) == set(ref), sorted(set(got) ^ set(ref))
    differ = [k for k in ref if got[k].shape != ref[k].shape or not np.array_equal(got[k], ref[k])]
    assert not differ, differ
    ids = torch.tensor([[1, 504, 3210, 28]])
    with torch.inference_mode():
        assert torch.equal(local.hf(ids).logits, subject.hf(ids).logits)


@pytest.mark.slow
def test_embedded_model_logits_match_llama_cpp(subject):
    # The dequantised transformers model against llama.cpp running the same Q4_1 gguf with its own
    # kernels, on the same token ids (BOS first). They differ slightly (llama.cpp quantises the
    # activations to 8 bits for its Q4_1 matmuls); on this 55-token prompt we measured
    # top-1 agreement 0.927, correlation of the log-softmax values 0.9991, mean KL(llama.cpp ||
    # ours) 0.0047 nats and max 0.034 per position. Wrong weights are far off: one MLP zeroed gave
    # top-1 0.76, mean KL 0.16; two MLPs swapped top-1 0.07, mean KL 6.3; layer 0's q/k rows left in
    # llama.cpp's rotary order mean KL 0.025, max 0.16.
    import llama_cpp

    tok = subject.tokenizer
    ids = [tok.bos_token_id] + tok(PROMPT, add_special_tokens=False)["input_ids"]
    llm = llama_cpp.Llama(model_path=str(embedded_gguf()), logits_all=True, n_ctx=256,
                          n_threads=2, verbose=False)
    try:
        assert llm.n_vocab() == subject.hf.config.vocab_size
        llm.eval(ids)
        ref = np.array(llm.scores[:len(ids)], dtype=np.float64)
    finally:
        llm.close()
    with torch.inference_mode():
        got = subject.hf(torch.tensor([ids])).logits[0].double().numpy()
    lr = ref - np.logaddexp.reduce(ref, axis=-1, keepdims=True)
    lg = got - np.logaddexp.reduce(got, axis=-1, keepdims=True)
    top1 = float((lr.argmax(-1) == lg.argmax(-1)).mean())
    corr = float(np.corrcoef(lr.ravel(), lg.ravel())[0, 1])
    kl = (np.exp(lr) * (lr - lg)).sum(-1)
    measured = dict(n=len(ids), top1=top1, corr=corr, mean_kl=float(kl.mean()), max_kl=float(kl.max()))
    assert top1 >= 0.85 and corr > 0.998, measured
    assert kl.mean() < 0.015 and kl.max() < 0.1, measured


def test_unknown_hook_is_a_clear_error(subject):
    with pytest.raises(ValueError, match="Unknown hook 'model.layer.8'.*model.layers"):
        subject.module("model.layer.8")


def test_missing_local_folder_and_offline_hub(monkeypatch):
    with pytest.raises(ValueError, match="does not exist"):
        models.load("./no/such/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(HubUnreachable, match="hf download openai-community/gpt2 --local-dir"):
        models.load("openai-community/gpt2")
    with pytest.raises(HubUnreachable, match="sae='train'"):
        saes.load("sae-lens:gemma-scope-2b-pt-res-canonical/layer_12/width_16k/canonical")


def test_sae_lens_folder_round_trip(tmp_path, topk_sae):
    topk_sae.save_model(str(tmp_path / "sae"))
    loaded = saes.load(str(tmp_path / "sae"))
    x = torch.randn(5, 576)
    assert torch.equal(loaded.encode(x), topk_sae.encode(x))
    assert torch.allclose(loaded.decode(loaded.encode(x)), topk_sae.decode(topk_sae.encode(x)))


def test_sparsify_folder_loads_through_sae_lens_converter(tmp_path):
    d_in, d_sae, k = 576, 128, 4
    torch.manual_seed(1)
    enc_w, enc_b = torch.randn(d_sae, d_in) * 0.05, torch.randn(d_sae) * 0.01
    w_dec, b_dec = torch.randn(d_sae, d_in) * 0.05, torch.randn(d_in) * 0.01
    folder = tmp_path / "layers.4"
    folder.mkdir()
    # The layout sparsify's SparseCoder.save_to_disk writes (W_dec is [num_latents, d_in]).
    (folder / "cfg.json").write_text(json.dumps({"d_in": d_in, "num_latents": d_sae, "k": k,
                                                 "expansion_factor": 32, "normalize_decoder": True,
                                                 "activation": "topk", "transcode": False}))
    save_file({"encoder.weight": enc_w, "encoder.bias": enc_b, "W_dec": w_dec, "b_dec": b_dec},
              str(folder / "sae.safetensors"))
    sae = saes.load(str(folder))
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (d_in, d_sae)
    x = torch.randn(3, d_in)
    # sparsify's math: topk(relu(W_enc (x - b_dec) + b_enc)); decode = top @ W_dec + b_dec.
    pre = torch.relu((x - b_dec) @ enc_w.T + enc_b)
    top = pre.topk(k, dim=-1)
    expect = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
    assert torch.allclose(sae.encode(x), expect, atol=1e-5)
    assert torch.allclose(sae.decode(expect), expect @ w_dec + b_dec, atol=1e-5)


def test_not_an_sae_folder(tmp_path):
    with pytest.raises(ValueError, match="not an SAE folder"):
        saes.load(str(tmp_path))
    with pytest.raises(ValueError, match="not found"):
        saes.load(str(tmp_path / "missing"))


def test_d_in_mismatch_is_reported_with_both_widths(subject):
    wide = random_topk_sae(d_in=1536)
    with pytest.raises(ValueError, match=r"SAE d_in 1536 != width 576 of model.layers.8"):
        saes.check_fits(wide, subject, "model.layers.8")
    assert saes.check_fits(wide, subject, "model.layers.8.mlp.act_fn") == 1536


def _mlp_capture(subject, ids: torch.Tensor, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(down_proj input, MLP output) of one layer, captured with plain torch hooks."""
    seen = {}
    mlp = subject.hf.model.layers[layer].mlp
    h1 = mlp.down_proj.register_forward_pre_hook(lambda m, a: seen.setdefault("in", a[0].detach().clone()))
    h2 = mlp.register_forward_hook(lambda m, a, o: seen.setdefault("out", o.detach().clone()))
    try:
        with torch.inference_mode():
            subject.hf(ids)
    finally:
        h1.remove(), h2.remove()
    return seen["in"], seen["out"]


def test_input_hooks_read_the_module_input(subject, rows):
    from autointerp import cache

    ids = torch.from_numpy(np.asarray(rows[:2, :12], dtype=np.int64))
    hook = models.neuron_hook(3)
    assert models.split_hook(hook) == ("model.layers.3.mlp.down_proj", True)
    assert models.split_hook("model.layers.3") == ("model.layers.3", False)
    want, _ = _mlp_capture(subject, ids, 3)
    got = cache.hooked_output(subject, hook, ids)
    assert subject.hook_dim(hook) == subject.hf.config.intermediate_size == got.shape[-1]
    assert torch.equal(got, want)
    assert not torch.equal(cache.hooked_output(subject, "model.layers.3.mlp.down_proj", ids)[..., :8], got[..., :8])


def test_neuron_sae_keeps_the_k_largest_and_steers_through_the_down_projection(subject, rows):
    from autointerp.scorers import intervention as iv

    sae, hook = saes.neuron_sae(subject, 3, k=8)
    ids = torch.from_numpy(np.asarray(rows[:1, :10], dtype=np.int64))
    hidden, mlp_out = _mlp_capture(subject, ids, 3)
    with torch.inference_mode():
        z = sae.encode(hidden[0])
    top = torch.topk(hidden[0], 8, dim=-1)
    kept = torch.zeros_like(hidden[0]).scatter(-1, top.indices, top.values.relu())
    assert torch.equal(z, kept)
    # steering neuron j at the last position adds strength * down_proj.weight[:, j] to the MLP output
    j, strength = int(top.indices[-1, 0]), 2.5
    seen = {}
    mlp = subject.hf.model.layers[3].mlp
    handle = mlp.register_forward_hook(lambda m, a, o: seen.setdefault("out", o.detach().clone()))
    try:
        with torch.inference_mode(), iv.intervene(subject, sae, hook, j, strength):
            subject.hf(ids)
    finally:
        handle.remove()
    delta = seen["out"][0, -1] - mlp_out[0, -1]
    col = mlp.down_proj.weight[:, j].detach()
    assert torch.allclose(delta, strength * col, atol=1e-4)
    assert torch.equal(seen["out"][0, :-1], mlp_out[0, :-1])  # other positions untouched
    out = saes.output_directions(sae, subject, hook)
    assert out.shape == (subject.hf.config.intermediate_size, subject.hf.config.hidden_size)
    assert torch.allclose(out[j], col)


def test_randomly_initialised_copy_has_the_architecture_not_the_weights(subject):
    a, b = models.randomly_initialised(subject, 0), models.randomly_initialised(subject, 0)
    c = models.randomly_initialised(subject, 1)
    names = [n for n, _ in subject.hf.named_parameters()]
    assert [n for n, _ in a.hf.named_parameters()] == names and a.tokenizer is subject.tokenizer
    w = lambda m: m.hf.model.layers[2].mlp.up_proj.weight
    assert torch.equal(w(a), w(b)) and not torch.equal(w(a), w(c))
    assert not torch.allclose(w(a), w(subject))
    assert abs(float(w(a).detach().std()) - subject.hf.config.initializer_range) < 0.002


def test_an_llm_request_still_works_after_nnsight_is_used():
    """nnsight gives every class a ``save`` attribute; anyio's asyncio backend, loaded lazily by the
    LLM client's first request, then failed to import (chapter 08 uses both in one process). A fresh
    interpreter, as a kernel is: use an envoy, then load the backend an LLM request needs."""
    import subprocess
    import sys

    code = ("import autointerp as ai; s = ai.models.load('embedded'); s.envoy('model.layers.1'); "
            "import anyio, anyio._backends._asyncio, anyio.abc; anyio.run(anyio.sleep, 0); print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_mlp_output_hook_follows_the_module_tree(subject):
    """SmolLM2 (Llama family): the MLP module's output; a block with a post-MLP norm (Gemma 2) would
    give that norm's output, as TransformerLens's hook_mlp_out and Gemma Scope read it."""
    assert models.mlp_output_hook(subject, 3) == "model.layers.3.mlp"
    block = subject.hf.get_submodule("model.layers.3")
    block.post_feedforward_layernorm = torch.nn.Identity()
    try:
        assert models.mlp_output_hook(subject, 3) == "model.layers.3.post_feedforward_layernorm"
    finally:
        del block.post_feedforward_layernorm
