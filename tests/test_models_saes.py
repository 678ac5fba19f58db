from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from autointerp import models, saes
from autointerp.paths import HubUnreachable
from conftest import random_topk_sae


def test_embedded_model_matches_the_gguf(subject):
    d = subject.describe()
    assert (d["n_layers"], d["d_model"], d["vocab"]) == (30, 576, 49152)
    assert subject.hook_dim("model.layers.8") == 576
    assert subject.hook_dim("model.layers.8.mlp.act_fn") == 1536


def test_local_folder_loads_the_same_weights(subject):
    again = models.load(subject.source)
    ids = torch.tensor([[1, 504, 3210, 28]])
    with torch.inference_mode():
        assert torch.equal(again.hf(ids).logits, subject.hf(ids).logits)


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
