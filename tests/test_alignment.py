"""Hungarian alignment of two SAEs' latents (autointerp.alignment)."""
from __future__ import annotations

import json
import zlib

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from autointerp import alignment as al
from conftest import random_topk_sae


def unit(n: int, d: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("method", ["dense", "sparse"])
def test_a_permuted_noisy_copy_is_recovered_exactly(method):
    A = unit(500, 32, 0)
    perm = np.random.default_rng(1).permutation(500)
    B = A[perm] + 1e-4 * np.random.default_rng(2).standard_normal(A.shape)
    M = al.match(A, B, method=method, m=8, progress=False)
    inverse = np.argsort(perm)  # B row inverse[i] is A row i
    assert M.method == method
    np.testing.assert_array_equal(M.rows, np.arange(500))
    np.testing.assert_array_equal(M.cols, inverse)
    assert M.similarity.min() > 0.999
    assert M.share_above(0.9) == 1.0
    assert M.total_cost < 500 * 1e-3


def test_sparse_reaches_the_dense_optimum():
    A, B = unit(300, 64, 3), unit(300, 64, 4)
    dense = al.match(A, B, method="dense")
    sparse = al.match(A, B, method="sparse", m=64, progress=False)
    assert sparse.total_cost == pytest.approx(dense.total_cost, rel=1e-6)
    assert dense.total_cost == pytest.approx(np.sum(1 - np.sum(A[dense.rows] * B[dense.cols], 1)))


def test_sparse_is_within_a_tenth_of_a_percent_of_dense_at_2000():
    A, B = unit(2000, 64, 5), unit(2000, 64, 6)
    dense = al.match(A, B, method="dense")
    sparse = al.match(A, B, method="sparse", m=32, progress=False)
    assert sparse.m == 32
    assert dense.total_cost <= sparse.total_cost <= 1.001 * dense.total_cost
    assert len(np.unique(sparse.cols)) == 2000


def test_auto_picks_dense_below_the_threshold_and_sparse_above():
    A, B = unit(100, 16, 7), unit(100, 16, 8)
    assert al.match(A, B).method == "dense"
    assert al.match(A, B, threshold=100 * 99, progress=False).method == "sparse"


def test_candidates_are_blocked_and_equal_brute_force_top_m(monkeypatch):
    A, B = torch.randn(1000, 24), torch.randn(777, 24)  # 777: B padded to whole column groups
    shapes = []
    real = torch.matmul

    def spy(a, b, **kw):
        shapes.append((a.shape[0], b.shape[1]))
        return real(a, b, **kw)

    monkeypatch.setattr(torch, "matmul", spy)
    blocked = al.candidates(A, B, m=16, block=64, progress=False)
    monkeypatch.setattr(torch, "matmul", real)
    assert len(shapes) == 16 and max(r for r, _ in shapes) == 64  # ceil(1000 / 64) blocks
    assert all(c < 1000 * 64 for r, c in shapes)  # never a full 1000 x 777 product

    whole = al.candidates(A, B, m=16, block=100_000, progress=False)
    S = al.unit_rows(A) @ al.unit_rows(B).T
    top_a, top_b = torch.topk(S, 16, dim=1), torch.topk(S.T, 16, dim=1)
    for c in (blocked, whole):
        np.testing.assert_array_equal(c.a_idx, top_a.indices.numpy())
        np.testing.assert_array_equal(c.b_idx, top_b.indices.numpy())
        np.testing.assert_allclose(c.a_sim, top_a.values.numpy(), atol=1e-5)
        np.testing.assert_allclose(c.b_sim, top_b.values.numpy(), atol=1e-5)


def test_candidate_graph_is_the_deduplicated_union_with_positive_weights():
    A, B = torch.randn(60, 8), torch.randn(50, 8)
    c = al.candidates(A, B, m=5, progress=False)
    G = al.candidate_graph(c, 60, 50)
    edges = {(i, int(j)) for i in range(60) for j in c.a_idx[i]}
    edges |= {(int(i), j) for j in range(50) for i in c.b_idx[j]}
    coo = G.tocoo()
    assert set(zip(coo.row.tolist(), coo.col.tolist())) == edges and G.nnz == len(edges)
    cos = (al.unit_rows(A) @ al.unit_rows(B).T).numpy()
    np.testing.assert_allclose(coo.data, al.OFFSET - cos[coo.row, coo.col], atol=1e-5)
    assert coo.data.min() >= 1.0  # scipy reads a zero weight as a missing edge


def crowded(n: int = 8, d: int = 16):
    """Every A row's nearest B row is B0, and every other B row's nearest A row is A0: the top-1
    graph joins A1..A(n-1) to B0 alone, so it has no full matching."""
    B = np.eye(n, d)
    noise = 0.01 * np.random.default_rng(9).standard_normal((n, d))
    A = B[[0] * n] + noise
    A[0] = B[0] + 0.2 * B[1:].sum(0)
    return A, B


def test_infeasible_candidate_graph_doubles_m():
    A, B = crowded()
    M = al.match(A, B, method="sparse", m=1, progress=False)
    assert M.m > 1
    assert M.total_cost == pytest.approx(al.match(A, B, method="dense").total_cost, rel=1e-9)
    assert sorted(M.cols.tolist()) == list(range(8))


def test_infeasible_candidate_graph_without_retries_says_what_to_change():
    A, B = crowded()
    with pytest.raises(ValueError, match=r"no full matching for m in \[1\].*Raise m.*method='dense'"):
        al.match(A, B, method="sparse", m=1, max_retries=0, progress=False)


@pytest.mark.parametrize("method", ["dense", "sparse"])
@pytest.mark.parametrize("n_a,n_b", [(50, 120), (120, 50)])
def test_rectangular_matches_every_row_of_the_smaller_side(method, n_a, n_b):
    A, B = unit(n_a, 16, 10), unit(n_b, 16, 11)
    M = al.match(A, B, method=method, m=16, progress=False)
    assert len(M.rows) == len(M.cols) == min(n_a, n_b)
    assert len(set(M.rows.tolist())) == len(set(M.cols.tolist())) == min(n_a, n_b)
    assert M.rows.max() < n_a and M.cols.max() < n_b
    if n_a < n_b:
        np.testing.assert_array_equal(M.rows, np.arange(n_a))
    np.testing.assert_allclose(M.similarity, np.sum(A[M.rows] * B[M.cols], 1), atol=1e-6)
    dense = al.match(A, B, method="dense")
    assert M.total_cost == pytest.approx(dense.total_cost, rel=1e-6)


def test_bfloat16_candidates_stay_near_the_optimum():
    A, B = unit(1500, 64, 12), unit(1500, 64, 13)
    dense = al.match(A, B, method="dense")
    fast = al.match(A, B, method="sparse", precision="bfloat16", progress=False)
    assert dense.total_cost <= fast.total_cost <= 1.001 * dense.total_cost
    np.testing.assert_allclose(fast.similarity, np.sum(A[fast.rows] * B[fast.cols], 1), atol=1e-6)


def test_auto_precision_is_measured_and_recorded(monkeypatch):
    """"auto" takes what this machine multiplies faster (measured once per width) and the
    matching says which it used; a machine where bfloat16 is not faster keeps float32."""
    choice = al.fastest_precision(64)
    assert choice in al.PRECISIONS and al.fastest_precision(64) == choice  # memoised
    A, B = unit(600, 64, 1), unit(600, 64, 2)
    assert al.match(A, B, method="sparse", progress=False).precision == choice
    monkeypatch.setitem(al._FASTEST, 64, "float32")
    assert al.match(A, B, method="sparse", progress=False).precision == "float32"
    assert al.match(A, B, method="sparse", precision="bfloat16", progress=False).precision == "bfloat16"
    with pytest.raises(ValueError, match="precision must be one of"):
        al.match(A, B, method="sparse", precision="fp8", progress=False)


def hashed_embed(texts: list[str]) -> np.ndarray:
    """A deterministic embedding: a shared direction plus a random unit vector seeded by each
    text, so equal texts give cosine 1 and different ones about 0.5 (like sentence embedders,
    whose cosines sit well above 0)."""
    def one(t: str) -> np.ndarray:
        v = np.random.default_rng(zlib.crc32(t.encode())).standard_normal(64)
        return v / np.linalg.norm(v) + np.eye(64)[0]
    return np.stack([one(t) for t in texts])


def test_explanation_agreement_detects_identical_explanations():
    n = 200
    texts_a = [f"explanation {i}" for i in range(n)]
    perm = np.random.default_rng(0).permutation(n)
    texts_b = [texts_a[perm[j]] for j in range(n)]  # B latent j explained like A latent perm[j]
    ag = al.explanation_agreement(texts_a, texts_b, (perm, np.arange(n)), hashed_embed, seed=0)
    assert ag.matched_mean == pytest.approx(1.0)
    assert 0.4 < ag.shuffled_mean < 0.6  # the shuffled partners' texts differ
    assert ag.difference == pytest.approx(ag.matched_mean - ag.shuffled_mean)
    assert ag.ci_low > 0.3 and ag.n == n
    assert ag.ci_low <= ag.difference <= ag.ci_high


def test_explanation_agreement_of_unrelated_explanations_includes_zero():
    n = 200
    texts_a = [f"a {i}" for i in range(n)]
    texts_b = [f"b {i}" for i in range(n)]
    ag = al.explanation_agreement(texts_a, texts_b, (np.arange(n), np.arange(n)), hashed_embed, seed=0)
    assert ag.ci_low < 0 < ag.ci_high
    assert 0.4 < ag.matched_mean < 0.6 and 0.4 < ag.shuffled_mean < 0.6
    assert ag == al.explanation_agreement(texts_a, texts_b, (np.arange(n), np.arange(n)),
                                          hashed_embed, seed=0)  # seeded: same CI twice


def test_directions_of_an_sae_lens_topk_sae_are_unit_rows():
    sae = random_topk_sae(d_in=16, d_sae=40, k=4)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # break unit norm and the tied init so each kind is told apart
        sae.W_dec.mul_(torch.rand(40, 1, generator=gen) * 3 + 0.5)
        sae.W_enc.copy_(torch.randn(16, 40, generator=gen))
    for kind, rows in (("decoder", sae.W_dec), ("encoder", sae.W_enc.T)):
        D = al.directions(sae, kind)
        assert D.shape == (40, 16)
        np.testing.assert_allclose(D.norm(dim=1).numpy(), 1.0, atol=1e-6)
        cos = torch.nn.functional.cosine_similarity(D, rows.detach(), dim=1)
        np.testing.assert_allclose(cos.numpy(), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="decoder"):
        al.directions(sae, "bias")


def test_activation_correlation_is_pearson_and_matches_like_directions():
    rng = np.random.default_rng(14)
    za = np.maximum(rng.standard_normal((400, 12)), 0)
    zb = za[:, rng.permutation(12)] * 3 + 0.5 * rng.standard_normal((400, 12))
    za[:, 5] = 0.0  # a dead latent: correlation 0, not NaN
    C = al.activation_correlation(za, zb)
    with np.errstate(invalid="ignore", divide="ignore"):
        expected = np.corrcoef(za.T, zb.T)[:12, 12:]
    expected[5] = 0.0
    np.testing.assert_allclose(C, expected, atol=1e-5)
    for method in ("dense", "sparse"):
        M = al.match(al.activation_directions(za), al.activation_directions(zb), method=method,
                     m=12, progress=False)
        np.testing.assert_allclose(M.similarity, C[M.rows, M.cols], atol=1e-5)
        rows, cols = linear_sum_assignment(1 - C)
        np.testing.assert_array_equal(M.cols[rows], cols)  # the assignment that maximises correlation
        assert M.total_cost == pytest.approx(np.sum(1 - C[rows, cols]), abs=1e-4)


def test_record_is_json_and_summaries_are_consistent():
    A = unit(64, 8, 15)
    M = al.match(A, A + 0.3 * unit(64, 8, 16))
    rec = json.loads(json.dumps(al.to_record(M)))
    assert rec["n_matched"] == 64 and rec["method"] == "dense" and len(rec["rows"]) == 64
    assert sum(rec["histogram"]["counts"]) == 64
    assert rec["share_above"]["0.7"] == M.share_above(0.7)
    q = list(M.quantiles().values())
    assert q == sorted(q) and M.similarity.min() <= q[0] and q[-1] <= M.similarity.max()


def test_layer_family_specs_stay_inside_the_model():
    from autointerp import layers

    sp = layers.specs("model.layers.8", 30, 1024)
    assert [n for n in sp if n.startswith("resid")] == ["resid7", "resid8", "resid9", "resid10"]
    assert sp["mlp9"] == ("model.layers.9.mlp", 1024) and sp["twin"] == ("model.layers.8", 1024)
    assert sp["narrow"] == ("model.layers.8", 256)
    top = layers.specs("model.layers.29", 30, 256)  # the last layer: the window moves down
    assert [n for n in top if n.startswith("mlp")] == ["mlp26", "mlp27", "mlp28", "mlp29"]
    with pytest.raises(ValueError, match="residual hook"):
        layers.specs("model.layers.8.mlp", 30, 256)
