"""Examples (windows, quantiles, train/test sets, negatives) and explainers (prompts, parsing,
failures, logit lens, results file, the local server end to end)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from conftest import random_topk_sae
from fault_server import FaultServer

from autointerp import cache, examples as ex, explain as xp, explanations as xps, neighbours
from autointerp.llm import Endpoint, LLMClient, open_endpoint
from autointerp.records import LatentExamples, Window

SETTINGS = ex.ExampleSettings(example_ctx_len=8, n_quantiles=2, train_per_quantile=2,
                              test_per_quantile=2, n_train_negatives=2, min_examples=6,
                              n_neighbours=4, seed=0)
FAST = dict(timeout_s=5, max_tries=2, backoff_base_s=0.01, backoff_max_s=0.05)


@pytest.fixture(scope="module")
def sae():
    return random_topk_sae()


@pytest.fixture(scope="module")
def reader(tmp_path_factory, subject, rows, sae):
    return cache.build_cache(tmp_path_factory.mktemp("cache"), subject, sae, "model.layers.4", rows,
                             sae_id="random", corpus_hash="test", progress=False)


@pytest.fixture(scope="module")
def decoder(sae):
    return sae.W_dec.detach().numpy()


@pytest.fixture(scope="module")
def latents(reader):
    return ex.pick_latents(reader.stats, 6, seed=0, min_count=SETTINGS.min_examples, max_rate=0.2)


@pytest.fixture(scope="module")
def built(reader, latents, decoder):
    lexs = ex.build(reader, latents, SETTINGS, decoder=decoder, progress=False)
    assert sum(not x.skipped for x in lexs) >= 3, [x.skipped_reason for x in lexs]
    return lexs


def window_acts(reader, latent: int, e: Window) -> np.ndarray:
    return reader.dense_row(e.row, latent)[e.start:e.start + len(e.token_ids)]


# -- windows and quantiles ----------------------------------------------------------------------
def _random_nonzeros(seed: int, n_rows: int, L: int, n: int):
    rng = np.random.default_rng(seed)
    flat = rng.choice(np.arange(n_rows * L).reshape(n_rows, L)[:, 1:].ravel(), n, replace=False)
    return flat, (rng.random(flat.size) + 0.1).astype(np.float32)


def _placement_error(peak: int, start: int, L: int, W: int, first_pos: int) -> tuple[float, float]:
    """(how far the peak sits from 3W/4 into the window, the least any W-window that holds the
    peak, avoids BOS and fits the row could do), by trying every such window."""
    best = min(abs(peak - s - 3 * W / 4) for s in range(first_pos, L - W + 1) if s <= peak < s + W)
    return abs(peak - start - 3 * W / 4), best


def _check_centred(t, flat, vals, L: int, W: int, first_pos: int = 1) -> list[int]:
    """Properties every centred WindowTable must have; returns the indices of the windows whose
    peak is NOT ~3/4 in (as near as the row edges allow)."""
    dense = np.zeros(((int(flat.max()) // L) + 1, L), np.float32)
    dense.flat[flat] = vals
    assert np.all(t.length == W)
    assert t.start.min() >= first_pos and (t.start + W).max() <= L  # never BOS, inside the row
    assert list(t.max_act) == sorted(t.max_act, reverse=True)  # ranked by max activation
    off_centre = []
    for i, (r, s, p, m) in enumerate(zip(t.row, t.start, t.peak, t.max_act)):
        seg = dense[r, s:s + W]
        assert s <= p < s + W, "the window does not contain its peak"
        assert dense[r, p] == m == seg.max() > 0, "the peak is not the window's strongest token"
        got, best = _placement_error(int(p), int(s), L, W, first_pos)
        # exactly 3W/4 in when that is a whole token, else the token either side of it
        if not (got == best if (3 * W) % 4 == 0 else got < best + 1):
            off_centre.append(i)
    for r in np.unique(t.row):  # windows of one latent never overlap
        assert np.all(np.diff(np.sort(t.start[t.row == r])) >= W), r
    for r in np.unique(flat // L):  # each row's strongest token is a window's peak, ~3/4 in
        k = np.flatnonzero((t.row == r) & (t.peak == int(np.argmax(dense[r]))))
        assert k.size == 1 and k[0] not in off_centre, r
    return off_centre


def test_centred_windows_put_the_peak_three_quarters_in_and_never_touch_bos():
    L, W = 64, 16
    spots = {(0, 40): 5.0, (1, 3): 5.0, (2, 62): 5.0, (3, 20): 5.0, (3, 24): 3.0, (3, 50): 4.0}
    flat = np.array([r * L + p for r, p in spots], np.int64)
    vals = np.array(list(spots.values()), np.float32)
    t = ex.windows_from_arrays(7, flat, vals, L, W, "centred", first_pos=1)
    assert _check_centred(t, flat, vals, L, W) == []
    got = {(int(r), int(p)): (int(s), int(p - s)) for r, s, p in zip(t.row, t.start, t.peak)}
    assert got[(0, 40)] == (28, 12)  # 12 of 16 tokens in: centring is not inverted
    assert got[(1, 3)] == (1, 2)  # pushed right by the row start, but never onto BOS
    assert got[(2, 62)] == (48, 14)  # pushed left by the row end
    assert got[(3, 20)] == (8, 12) and got[(3, 50)] == (38, 12)
    assert len(t) == 5  # the weaker peak at (3, 24) would overlap (3, 20)'s window: none
    for W in (8, 9, 10, 16):  # random non-zeros, several widths (3W/4 whole or not)
        for seed, n_rows, n in ((0, 20, 300), (1, 40, 60)):
            flat, vals = _random_nonzeros(seed, n_rows, L, n)
            t = ex.windows_from_arrays(7, flat, vals, L, W, "centred", first_pos=1)
            _check_centred(t, flat, vals, L, W)


def test_every_centred_window_has_its_peak_three_quarters_in():
    L, W = 64, 16
    # 5.0 at 20 takes [8, 24); 4.5 at 25 would overlap it, so no window; 4.0 at 36 takes [24, 40),
    # which holds 4.5 at 25: that window's peak (its strongest token) is 1 token in, not 12.
    flat, vals = np.array([20, 25, 36]), np.array([5.0, 4.5, 4.0], np.float32)
    t = ex.windows_from_arrays(7, flat, vals, L, W, "centred", first_pos=1)
    assert _check_centred(t, flat, vals, L, W) == []
    for W in (8, 9, 10, 16):
        for seed, n_rows, n in ((0, 20, 300), (1, 40, 60)):
            flat, vals = _random_nonzeros(seed, n_rows, L, n)
            t = ex.windows_from_arrays(7, flat, vals, L, W, "centred", first_pos=1)
            assert _check_centred(t, flat, vals, L, W) == [], (W, seed)


def test_fixed_windows_are_row_blocks_after_bos():
    L, W = 32, 8
    flat = np.array([2, 5, 9, 31, 32 + 17], np.int64)
    vals = np.array([1.0, 3.0, 2.0, 4.0, 0.5], np.float32)
    t = ex.windows_from_arrays(0, flat, vals, L, W, "fixed", first_pos=1)
    assert list(zip(t.row, t.start, t.length, t.peak, t.max_act)) == [
        (0, 24, 8, 31, 4.0), (0, 1, 7, 5, 3.0), (0, 8, 8, 9, 2.0), (1, 16, 8, 17, 0.5)]
    with pytest.raises(ValueError, match="must divide ctx_len"):
        ex.windows_from_arrays(0, flat, vals, L, 7, "fixed")


def test_quantile_bins_are_equal_count_and_bin_0_holds_the_top(reader, latents):
    q = ex.quantile_bins(103, 10)
    counts = np.bincount(q)
    assert counts.size == 10 and counts.max() - counts.min() <= 1 and np.all(np.diff(q) >= 0)
    t = ex.latent_windows(reader, latents[0], SETTINGS)
    qb = t.quantiles(3)
    assert t.max_act[qb == 0].min() >= t.max_act[qb == 1].max() >= t.max_act[qb == 2].min()


# -- example sets --------------------------------------------------------------------------------
@pytest.mark.parametrize("window", ["centred", "fixed"])
def test_sets_are_disjoint_true_and_negatives_silent(reader, latents, decoder, built, window):
    lexs = built if window == SETTINGS.window else ex.build(
        reader, latents, dataclasses.replace(SETTINGS, window=window), decoder=decoder, progress=False)
    assert sum(not x.skipped for x in lexs) >= 3
    for lx in (x for x in lexs if not x.skipped):
        train = {(e.row, e.start) for e in lx.train}
        test = {(e.row, e.start) for e in lx.test_activating}
        assert train and test and not train & test
        assert len(lx.test_negative) == len(lx.test_activating)
        assert sorted(e.quantile for e in lx.train) == [0, 0, 1, 1]
        for e in lx.train + lx.test_activating:
            assert e.kind == "activating" and e.start >= 1 and e.max_act > 0
            np.testing.assert_allclose(window_acts(reader, lx.latent, e), e.acts, atol=1e-3)
        for e in lx.test_negative + lx.test_hard_negative + lx.train_negative:
            assert not window_acts(reader, lx.latent, e).any(), "a negative where the target fires"
            assert e.start >= 1 and e.quantile is None and max(e.acts) == 0
        for e in lx.test_hard_negative + lx.train_negative:
            assert e.kind == "hard_negative" and e.neighbour in lx.neighbours
            assert window_acts(reader, e.neighbour, e).max() == pytest.approx(e.neighbour_act, rel=1e-3)
        hard = {(e.row, e.start) for e in lx.test_hard_negative + lx.train_negative}
        assert len(hard) == len(lx.test_hard_negative) + len(lx.train_negative)


def test_seeded_reproducibility(reader, latents, decoder, built):
    again = ex.build(reader, latents, SETTINGS, decoder=decoder, progress=False)
    assert again == built
    other = ex.build(reader, latents, dataclasses.replace(SETTINGS, seed=1), decoder=decoder,
                     progress=False)
    assert [x.train for x in other] != [x.train for x in built]
    one = ex.build(reader, latents[1:2], SETTINGS, decoder=decoder, progress=False)[0]
    assert one == built[1], "a latent's examples must not depend on which other latents are built"


def test_latents_below_min_examples_are_skipped_and_reported(reader, latents):
    lexs = ex.build(reader, latents, dataclasses.replace(SETTINGS, min_examples=10_000, n_neighbours=0),
                    progress=False)
    assert all(x.skipped and "min_examples=10000" in x.skipped_reason and not x.train for x in lexs)
    assert xp.run_explainers(lexs, [xp.TopTokensExplainer()], str) == []


def test_neighbours_by_decoder_cosine_and_cooccurrence(reader, latents):
    rng = np.random.default_rng(0)
    dec = rng.normal(size=(reader.d_sae, 16)).astype(np.float32)
    dec[latents[1]] = dec[latents[0]] + 0.01 * rng.normal(size=16)
    assert neighbours.decoder_neighbours(dec, [latents[0]], 3)[latents[0]][0] == latents[1]
    j = latents[0]
    got = neighbours.cooccurrence_neighbours(reader, [j], 3)[j]
    mine = set(reader.latent(j)[0].tolist())
    jac = {k: len(mine & set(reader.latent(k)[0].tolist()))
           / len(mine | set(reader.latent(k)[0].tolist())) for k in range(reader.d_sae) if k != j}
    best = sorted(jac, key=lambda k: (-jac[k], k))[:3]
    assert list(got) == best


def test_examples_file_roundtrip(tmp_path, built):
    path = ex.save(tmp_path / "examples.jsonl", built, settings=dataclasses.asdict(SETTINGS))
    header, back = ex.load(path)
    assert header["schema"] == "autointerp.examples/1" and back == built
    assert header["settings"]["example_ctx_len"] == SETTINGS.example_ctx_len


# -- prompts and explainers ----------------------------------------------------------------------
def test_highlights_merge_neighbouring_active_tokens():
    toks = ["The", " big", " red", " dog", " ran", " home", "\n"]
    acts = [0.0, 5.0, 4.0, 1.0, 2.0, 0.0, 0.0]  # threshold 0.3 x 5 = 1.5
    assert xp.format_example(toks, acts, 10.0) == "The <<big red>> dog <<ran>> home\\n"
    shown = xp.format_example(toks, acts, 10.0, show_activations=True)
    assert shown.endswith("Activations: ('big', 5), ('red', 4), ('ran', 2)")
    assert xp.highlight(["a", " b", " c"], [True, True, True]) == "<<a b c>>"


def fake_client(srv: FaultServer, tmp_path=None) -> LLMClient:
    return LLMClient(Endpoint(base_url=srv.base_url, model="fake"), tmp_path, concurrency=1, **FAST)


def test_unparseable_or_copied_answers_are_recorded_failures(built):
    lexs = [x for x in built if not x.skipped][:4]
    script = [("good", "It is about files, I think."), ("good", "[EXPLANATION]: Names of oceans and seas."),
              ("status", 400), ("good", "Reasoning first.\n[explanation]: \"Opening brackets in code\"\nmore")]
    dec = lambda ids: [f" t{i}" for i in ids]  # noqa: E731
    with FaultServer(script) as srv:
        out = xp.run_explainers(lexs, [xp.LLMExplainer(max_tokens=40), xp.TopTokensExplainer()], dec,
                                fake_client(srv))
        sent = srv.requests
    llm = [x for x in out if x.explainer == "llm"]
    assert [x.failed for x in llm] == [True, True, True, False]
    assert llm[0].text is None and "marker" in llm[0].error and llm[0].raw.startswith("It is")
    assert "worked example" in llm[1].error and "HTTP 400" in llm[2].error
    assert llm[3].text == "Opening brackets in code" and llm[3].prompt_hash == xp.LLMExplainer(max_tokens=40).prompt_hash
    assert all(not x.failed for x in out if x.explainer == "top_tokens")
    assert sent[0]["temperature"] == 0 and sent[0]["max_tokens"] == 40
    assert "<<" in sent[0]["messages"][-1]["content"]
    shown = xp.render_prompt(xp.LLMExplainer(max_tokens=40), lexs[0], dec)
    assert all(m["content"] in shown for m in sent[0]["messages"]), "render_prompt must show what is sent"


def test_contrastive_and_best_of_k(built):
    lx = next(x for x in built if not x.skipped)
    dec = lambda ids: [f" t{i}" for i in ids]  # noqa: E731
    user = xp.contrastive_explainer().messages(lx, dec)[-1][1]
    assert "ACTIVATING EXAMPLES:" in user and "NON-ACTIVATING EXAMPLES:" in user
    assert user.split("NON-ACTIVATING")[1].count("Example ") == len(lx.train_negative)
    assert "<<" not in user.split("NON-ACTIVATING")[1]
    bok = xp.LLMExplainer(n_samples=3, name="llm_k3")
    with FaultServer(default=("good", "[EXPLANATION]: something")) as srv:
        out = xp.run_explainers([lx], [bok], dec, fake_client(srv))
        sent = srv.requests
    assert [x.sample for x in out] == [0, 1, 2] and sum(x.random_pick for x in out) == 1
    assert {r["seed"] for r in sent} == {0, 1, 2} and {r["temperature"] for r in sent} == {0.7}
    with pytest.raises(ValueError, match="sample_temperature"):
        xp.LLMExplainer(n_samples=2, sample_temperature=0)


def test_logit_lens_finds_a_planted_direction(subject):
    tok = subject.tokenizer
    U = subject.hf.get_output_embeddings().weight.detach()
    scale = xp.final_norm_scale(subject.hf)
    t = tok.encode(" function", add_special_tokens=False)[0]
    dec = torch.zeros(4, U.shape[1])
    dec[2] = U[t] / scale  # after the final norm's scale this is exactly the token's unembedding row
    dec[3] = -dec[2]
    lens = xp.LogitLensExplainer(dec, U, scale, k=5)
    decode = ex.TokenDecoder(tok)
    up = lens.explain(LatentExamples(2, 1.0, 0), decode)
    down = lens.explain(LatentExamples(3, 1.0, 0), decode)
    assert up.details["promoted"][0][2] == t and '"function"' in up.text
    assert down.details["suppressed"][0][2] == t


def test_results_file_header_and_frame(tmp_path, built):
    dec = lambda ids: [f" t{i}" for i in ids]  # noqa: E731
    exps = [xp.TopTokensExplainer()]
    out = xp.run_explainers(built, exps, dec)
    ep = Endpoint(base_url="https://user:sk-SECRET@api.example.com/v1?key=sk-SECRET", model="m")
    path = xps.save(tmp_path, out, explainers=exps, endpoint=ep, seed=0,
                   skipped={x.latent: x.skipped_reason for x in built if x.skipped})
    assert "SECRET" not in path.read_text()
    header, recs = xps.load_records(tmp_path)
    assert header["llm"]["base_url"] == "https://api.example.com/v1"
    assert header["explainers"][0]["prompt_hash"] == exps[0].prompt_hash
    assert header["provenance"]["packages"]["numpy"] and recs == out
    assert len(path.read_text().splitlines()) == 1 + len({x.latent for x in out})
    df = xps.load(tmp_path)
    assert len(df) == len(out) and {"latent", "explainer", "text", "failed"} <= set(df.columns)
    assert xps.summary(out).loc["top_tokens", "failure_rate"] == 0
    assert list(xps.side_by_side(out).columns) == ["top_tokens"]


@pytest.mark.slow
def test_local_server_end_to_end_and_rerun_is_cached(tmp_path, built, subject):
    lexs = [x for x in built if not x.skipped][:2]
    decode = ex.TokenDecoder(subject.tokenizer)
    exps = [xp.LLMExplainer(max_tokens=32), xp.TopTokensExplainer()]
    with open_endpoint(n_ctx=2048) as ep:
        first = LLMClient(ep, tmp_path / "llm_cache", concurrency=1)
        out = xp.run_explainers(lexs, exps, decode, first)
        again = LLMClient(ep, tmp_path / "llm_cache", concurrency=1)
        out2 = xp.run_explainers(lexs, exps, decode, again)
    assert first.ledger.calls == 2 and first.ledger.failures == 0
    assert again.ledger.calls == 0 and again.ledger.cache_hits == 2
    assert [x.raw for x in out2] == [x.raw for x in out]
    for x in out:
        assert x.failed == (x.text is None) and (x.text or x.error)
    xps.save(tmp_path, out, explainers=exps, endpoint=ep)
    _, recs = xps.load_records(tmp_path)
    assert len(recs) == 4 and {r.model for r in recs if r.explainer == "llm"} == {ep.model}
    head = json.loads((tmp_path / "explanations.jsonl").read_text().splitlines()[0])["header"]
    assert head["schema"] == "autointerp.explanations/1" and head["llm"]["model"] == ep.model


def test_top_tokens_counts_the_token_at_each_peak():
    def example(ids, acts):
        return Window(0, 0, 1, tuple(ids), tuple(acts), max(acts), 0, "activating")
    lx = LatentExamples(0, 1.0, 3, train=(example([1, 2], [0.1, 0.9]), example([3, 4], [0.8, 0.2]),
                                             example([5, 6], [0.0, 0.5])))
    words = {1: "a", 2: " the", 3: "the", 4: "b", 5: "c", 6: "\n"}
    got = xp.TopTokensExplainer().explain(lx, lambda ids: [words[i] for i in ids])
    assert got.text == 'Fires on the tokens "the" (2 of 3), "\\n" (1 of 3).'
    assert got.details["top_share"] == pytest.approx(2 / 3)
