from __future__ import annotations

import json

import numpy as np
import pytest

from autointerp import config, corpus


def test_profiles_resolve_and_override(tmp_path):
    cfg = config.resolve("smoke", tmp_path, sae_k=4)
    assert cfg.sae_k == 4 and cfg.sae_width == config.SETTINGS["run"]["smoke"]["sae_width"]
    with pytest.raises(ValueError, match="Unknown profile"):
        config.resolve("huge", tmp_path)
    with pytest.raises(ValueError, match="Unknown setting"):
        config.resolve("smoke", tmp_path, sae_widht=3)
    with pytest.raises(ValueError, match="n_tokens"):
        config.resolve("smoke", tmp_path, n_tokens=10, ctx_len=64)


def test_run_dir_refuses_other_settings_once_it_holds_results(tmp_path):
    cfg = config.resolve("smoke", tmp_path)
    config.save(cfg)
    (tmp_path / "sae").mkdir()
    config.save(cfg)  # same settings: fine
    with pytest.raises(ValueError, match="other settings"):
        config.save(config.resolve("smoke", tmp_path, sae_width=64))
    assert json.loads((tmp_path / "run.json").read_text())["config"]["sae_width"] == cfg.sae_width
    loaded = config.load(tmp_path, n_tokens=4096)
    assert loaded.n_tokens == 4096 and loaded.sae_width == cfg.sae_width
    with pytest.raises(ValueError, match="fixed by notebook 00"):
        config.load(tmp_path, hook="model.layers.3")


def test_load_without_run_json_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="00_setup"):
        config.load(tmp_path)


def test_stdlib_corpus_has_prose():
    docs = corpus.load_documents("stdlib")
    assert len(docs) > 300
    assert any(d.source.startswith("pydoc:topics/") for d in docs)
    assert sum(len(d.text) for d in docs) > 1_000_000


def test_packing_is_deterministic_and_bos_led(subject):
    docs = corpus.load_documents("stdlib")[:80]
    a = corpus.pack(docs, subject.tokenizer, ctx_len=64, n_tokens=64 * 10, seed=1, spec="x")
    b = corpus.pack(docs, subject.tokenizer, ctx_len=64, n_tokens=64 * 10, seed=1, spec="x")
    c = corpus.pack(docs, subject.tokenizer, ctx_len=64, n_tokens=64 * 10, seed=2, spec="x")
    assert a.tokens.shape == (10, 64) and a.tokens.dtype == np.int32
    assert (a.tokens[:, 0] == subject.tokenizer.bos_token_id).all()
    assert np.array_equal(a.tokens, b.tokens) and a.content_hash == b.content_hash
    assert a.content_hash != c.content_hash
    # Rows are the token stream cut in order: row i's tail continues into row i+1's body.
    stream = np.concatenate([r[1:] for r in a.tokens])
    first_doc = subject.tokenizer(docs[_first_doc(len(docs), 1)].text,
                                  add_special_tokens=False)["input_ids"]
    assert stream[: min(50, len(first_doc))].tolist() == first_doc[:50]


def _first_doc(n: int, seed: int) -> int:
    import random

    order = list(range(n))
    random.Random(seed).shuffle(order)
    return order[0]


def test_textdir_source_and_errors(tmp_path, subject):
    (tmp_path / "a.txt").write_text("The sea is wide. " * 50)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("Rivers flow to the ocean. " * 50)
    docs = corpus.load_documents(f"textdir:{tmp_path}")
    assert [d.source for d in docs] == ["a.txt", "sub/b.md"]
    packed = corpus.pack(docs, subject.tokenizer, ctx_len=16, n_tokens=160, seed=0)
    assert packed.tokens.shape == (10, 16)
    with pytest.raises(ValueError, match="only .* tokens .* lower n_tokens"):
        corpus.pack(docs, subject.tokenizer, ctx_len=16, n_tokens=10**6, seed=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "blank.txt").write_text("   \n")
    with pytest.raises(ValueError, match="holds no text"):
        corpus.load_documents(f"textdir:{empty}")
    code_only = tmp_path / "code"
    code_only.mkdir()
    (code_only / "x.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="no .* files"):
        corpus.load_documents(f"textdir:{code_only}")
    with pytest.raises(ValueError, match="Unknown corpus"):
        corpus.load_documents("wikipedia")


def test_hf_corpus_offline_fails_fast_and_clearly(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from autointerp.paths import HubUnreachable

    with pytest.raises(HubUnreachable, match="textdir"):
        corpus.load_documents("hf:roneneldan/TinyStories")
