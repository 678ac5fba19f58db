"""Planted latents: probes find their concept, the saved SAE fires on it, the record round-trips,
and the embedding scorer separates true from shuffled explanations on them."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from autointerp import planted as pl

HOOK = "model.layers.4"


@pytest.fixture(scope="module")
def tokens(subject) -> np.ndarray:
    from autointerp import corpus

    return corpus.load_and_pack("stdlib", subject.tokenizer, ctx_len=64, n_tokens=64 * 96,
                                seed=0).tokens


@pytest.fixture(scope="module")
def built(subject, tokens, tmp_path_factory) -> pl.PlantedSet:
    out = tmp_path_factory.mktemp("planted")
    return pl.build_planted(subject, HOOK, tokens, out, n_token_concepts=6,
                            classes=("quote", "open_bracket"), seed=0)


def test_probes_separate_heldout(built):
    assert 4 <= len(built.latents) <= 8
    assert [p.latent for p in built.latents] == list(range(len(built.latents)))
    words = [p for p in built.latents if p.concept.startswith("word:")]
    assert len(words) >= 3
    for p in built.latents:
        assert p.probe_auroc > (0.9 if p in words else 0.8), p
        assert p.n_heldout_pos >= 5 and p.token_ids
    for p in words:
        assert p.explanation == f"the word '{p.concept.removeprefix('word:')}'"
    for concept, why in built.skipped:
        assert why.startswith(("too rare", "no token")), (concept, why)
    assert built.seconds > 0 and built.hook == HOOK


def test_saved_sae_fires_on_concept(subject, tokens, built):
    from autointerp import saes

    sae = saes.load(built.sae_path)
    assert sae.cfg.d_sae == len(built.latents) and sae.cfg.metadata.hook_name == HOOK
    held = tokens[list(built.heldout_rows)]
    x = saes.hooked_activations(subject, HOOK, held)[:, built.first_pos:]
    with torch.inference_mode():
        z = sae.encode(x.reshape(-1, x.shape[-1])).numpy()
    tok = held[:, built.first_pos:].ravel()
    for p in built.latents:
        fire, y = z[:, p.latent] > 0, np.isin(tok, p.token_ids)
        precision = (fire & y).sum() / max(fire.sum(), 1)
        recall = (fire & y).sum() / y.sum()
        assert precision == pytest.approx(p.precision, abs=1e-3), p.concept
        assert recall == pytest.approx(p.recall, abs=1e-3), p.concept
        if p.concept.startswith("word:"):
            assert precision >= 0.8 and recall >= 0.7, (p.concept, precision, recall)
    # decoder rows are unit probe directions
    norms = sae.W_dec.detach().norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)


def test_planted_json_round_trips(built):
    sae, again = pl.load_planted(built.sae_path)
    assert again == built
    assert sae.cfg.d_sae == len(again.latents)
    assert again.explanations == {p.latent: p.explanation for p in built.latents}


def test_clear_errors(subject, tokens, tmp_path):
    with pytest.raises(ValueError, match="Unknown word classes"):
        pl.build_planted(subject, HOOK, tokens[:8], tmp_path, classes=("nope",))
    with pytest.raises(ValueError, match="frequent enough"):
        pl.build_planted(subject, HOOK, tokens[:8], tmp_path, n_token_concepts=2,
                         classes=("quote",), min_positives=10 ** 6)
    with pytest.raises(ValueError, match="not a planted-latent folder"):
        pl.read_planted(tmp_path)


def test_fit_probe_on_separable_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=gen) * 3 + 5
    y = x[:, 3] > 6
    w, b = pl.fit_probe(x, y)
    pred = (x @ w + b) > 0
    assert (pred == y).float().mean() > 0.97


def test_examples_follow_the_concept(subject, tokens, built):
    from autointerp.records import window_text

    ex = pl.planted_windows(built, tokens, n_pos=10, n_neg=10, width=16)
    assert sorted(ex) == [p.latent for p in built.latents]
    for p in built.latents:
        pos = [e for e in ex[p.latent] if e.label]
        neg = [e for e in ex[p.latent] if not e.label]
        assert len(pos) == 10 and 0 < len(neg) <= 10
        assert all(e.quantile == 0 for e in pos) and all(e.quantile is None for e in neg)
        if p.concept.startswith("word:"):
            word = p.concept.removeprefix("word:").lower()
            assert all(word in window_text(e, subject.tokenizer).lower() for e in pos), p.concept
        assert all(e.source == "planted" for e in ex[p.latent])
        for e in neg:  # the window itself holds none of the concept's tokens
            r, s = map(int, e.id.split(":"))
            assert not np.isin(tokens[r, s:s + 16], p.token_ids).any()


def test_validity_report_embedding_separates(subject, tokens, built):
    from autointerp.scorers.embedding import EmbeddingScorer

    ex = pl.planted_windows(built, tokens, n_pos=20, n_neg=20, seed=0)
    rep = pl.validity_report(EmbeddingScorer(subject.tokenizer, progress=False), built, ex, seed=0)
    assert rep["scorer"] == "embedding" and rep["n_latents"] == len(built.latents)
    assert rep["true_auroc"] > rep["shuffled_auroc"]
    assert rep["diff_ci"][0] > 0, rep["summary"]
    assert rep["verdict"] == pl.SEPARATES
    assert len(rep["per_latent"]) == len(built.latents)
    assert all(r["explanation"] != r["shuffled_explanation"] for r in rep["per_latent"])


def test_pipeline_caches_the_planted_sae(subject, tokens, built, tmp_path):
    """The planted SAE goes through the ordinary cache unchanged; top windows peak on the concept."""
    from autointerp import cache

    sae, _ = pl.load_planted(built.sae_path)
    reader = cache.build_cache(tmp_path / "cache", subject, sae, HOOK, tokens[:48], sae_id="planted",
                               corpus_hash="test", progress=False)
    for p in built.latents:
        wins = reader.top_windows(p.latent, n=5, width=16)
        assert wins, p.concept
        assert all(w.token_ids[w.peak] in p.token_ids for w in wins), p.concept


def test_planted_windows_mark_exactly_the_concept_tokens(built, tokens, subject):
    wins = pl.planted_windows(built, tokens, n_pos=5, n_neg=5, width=16, seed=1)
    again = pl.planted_windows(built, tokens, n_pos=5, n_neg=5, width=16, seed=1)
    for p in built.latents:
        exs = wins[p.latent]
        assert [e.id for e in exs] == [e.id for e in again[p.latent]]  # seeded: the same windows
        for e in exs:
            assert len(e.token_ids) == len(e.acts) == 16
            hit = [float(t in p.token_ids) for t in e.token_ids]
            assert list(e.acts) == hit
            assert (e.kind == "activating") == (max(hit) == 1.0)
