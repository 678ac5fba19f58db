from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from autointerp import cache

HOOK = "model.layers.4"


def _build(tmp_path, subject, sae, rows, **kw):
    return cache.build_cache(tmp_path, subject, sae, HOOK, rows, sae_id="random",
                             corpus_hash="test", batch_size=4, shard_rows=8, progress=False, **kw)


def _direct(subject, sae, rows):
    """Reference: a plain forward hook on the full model, then SAE encode."""
    seen = []
    handle = subject.module(HOOK).register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.inference_mode():
        subject.hf(torch.from_numpy(rows).long())
        handle.remove()
        return sae.encode(seen[0]).numpy()


def test_cached_values_equal_direct_hook_and_encode(tmp_path, subject, topk_sae, rows):
    reader = _build(tmp_path, subject, topk_sae, rows)
    ref = _direct(subject, topk_sae, rows)  # [rows, ctx, d_sae]
    ref[:, 0] = 0  # BOS position is not cached
    rng = np.random.default_rng(0)
    for latent in rng.choice(topk_sae.cfg.d_sae, size=40, replace=False):
        dense = np.zeros(rows.size, np.float32)
        flat, vals = reader.latent(int(latent))
        dense[flat] = vals
        np.testing.assert_allclose(dense, ref[..., latent].reshape(-1), rtol=2e-3, atol=2e-3)
    # Every cached token has exactly k non-zeros (TopK), the BOS position none.
    stats = reader.stats
    assert stats.n_tokens == rows.shape[0] * (rows.shape[1] - 1)
    assert stats.count.sum() == stats.n_tokens * topk_sae.cfg.k
    assert np.allclose(stats.max_act[stats.count > 0], ref.max(axis=(0, 1))[stats.count > 0], rtol=2e-3)


def test_resume_after_crash_gives_identical_shards(tmp_path, subject, topk_sae, rows, monkeypatch):
    clean = _build(tmp_path / "clean", subject, topk_sae, rows)
    calls = {"n": 0}
    real_submit = cache.ShardWriter.submit

    def crashing_submit(self, path, arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # die halfway through writing the second shard
            path.with_name(path.name + ".tmp").write_bytes(b"half a shard")
            raise KeyboardInterrupt
        real_submit(self, path, arrays)

    monkeypatch.setattr(cache.ShardWriter, "submit", crashing_submit)
    with pytest.raises(KeyboardInterrupt):
        _build(tmp_path / "crashed", subject, topk_sae, rows)
    shards = sorted((tmp_path / "crashed" / "shards").glob("*"))
    assert [p.name for p in shards] == ["shard_00000.npz", "shard_00001.npz.tmp"]
    first_shard = shards[0].read_bytes()
    monkeypatch.setattr(cache.ShardWriter, "submit", real_submit)
    resumed = _build(tmp_path / "crashed", subject, topk_sae, rows)
    assert shards[0].read_bytes() == first_shard  # not redone
    names = sorted(p.name for p in (tmp_path / "crashed" / "shards").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "clean" / "shards").iterdir())
    for name in names:
        a = np.load(tmp_path / "clean" / "shards" / name)
        b = np.load(tmp_path / "crashed" / "shards" / name)
        for field in cache.SHARD_FIELDS:
            assert np.array_equal(a[field], b[field]), (name, field)
    for j in range(topk_sae.cfg.d_sae):
        assert np.array_equal(clean.latent(j)[0], resumed.latent(j)[0])
    np.testing.assert_array_equal(clean.stats.count, resumed.stats.count)


def test_cache_refuses_other_settings(tmp_path, subject, topk_sae, rows):
    _build(tmp_path, subject, topk_sae, rows)
    with pytest.raises(ValueError, match="other settings.*shard_rows"):
        cache.build_cache(tmp_path, subject, topk_sae, HOOK, rows, sae_id="random",
                          corpus_hash="test", batch_size=4, shard_rows=4, progress=False)


def test_top_windows_are_centred_on_the_peak(tmp_path, subject, topk_sae, rows):
    reader = _build(tmp_path, subject, topk_sae, rows)
    j = int(np.argmax(reader.stats.count))
    width = 16
    wins = reader.top_windows(j, n=5, width=width)
    assert len(wins) == 5 and [w.max_act for w in wins] == sorted((w.max_act for w in wins), reverse=True)
    for w in wins:
        assert len(w.token_ids) == width and w.acts[w.peak] == pytest.approx(w.max_act)
        pos = w.start + w.peak
        # The peak sits 3/4 into the window unless the row's edge is in the way.
        expected = min(max(pos - 3 * width // 4, 1), rows.shape[1] - width)  # never the BOS
        assert w.start == expected
        assert list(w.token_ids) == rows[w.row, w.start:w.start + width].tolist()
    assert reader.top_windows(j, n=1)[0].max_act == pytest.approx(float(reader.stats.max_act[j]), rel=1e-3)


def test_reader_errors_are_clear(tmp_path, subject, topk_sae, rows):
    with pytest.raises(FileNotFoundError, match="01_caching"):
        cache.CacheReader(tmp_path)
    reader = _build(tmp_path, subject, topk_sae, rows)
    with pytest.raises(IndexError, match="256 latents"):
        reader.latent(256)


def _generic(sae, hidden, row0, first_pos):
    with torch.inference_mode():
        return cache.sparsify(sae.encode(hidden), row0, first_pos)


@pytest.mark.parametrize("variant", ["plain", "biases", "some_negative", "rescaled"])
def test_topk_fast_path_equals_dense_encode_and_nonzero(variant):
    from conftest import random_topk_sae

    sae = random_topk_sae(d_in=64, d_sae=512, k=16, seed=3)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        if variant != "plain":
            sae.b_enc.copy_(torch.randn(512, generator=gen) * 0.5)
            sae.b_dec.copy_(torch.randn(64, generator=gen) * 0.5)
        if variant == "some_negative":  # top-k pre-activations below 0 are dropped by the ReLU
            sae.b_enc.sub_(2.0)
        if variant == "rescaled":
            sae.W_dec.mul_(torch.rand(512, 1, generator=gen) + 0.5)
            sae.cfg.rescale_acts_by_decoder_norm = True
    assert cache._topk_k(sae) == 16
    hidden = torch.randn(3, 20, 64, generator=gen)
    fast, ref = cache.sparse_encode(sae, hidden, 40, 1), _generic(sae, hidden, 40, 1)
    assert ref["row"].size > 0
    if variant == "some_negative":
        assert ref["row"].size < 3 * 19 * 16
    for field in cache.SHARD_FIELDS:
        assert fast[field].dtype == ref[field].dtype, field
        assert np.array_equal(fast[field], ref[field]), field


def test_other_saes_take_the_generic_path():
    from sae_lens import StandardSAE, StandardSAEConfig

    sae = StandardSAE(StandardSAEConfig(d_in=32, d_sae=128)).eval()
    assert cache._topk_k(sae) is None
    hidden = torch.randn(2, 10, 32)
    out, ref = cache.sparse_encode(sae, hidden, 0, 1), _generic(sae, hidden, 0, 1)
    for field in cache.SHARD_FIELDS:
        assert np.array_equal(out[field], ref[field]), field


def _reference_stats(reader, top_n):
    """The per-latent loop the vectorised stats replace."""
    d = reader.d_sae
    max_act, mean_act, share = np.zeros(d), np.zeros(d), np.zeros(d)
    flat_tokens = reader.tokens.reshape(-1)
    for j in np.flatnonzero(np.diff(reader.ptr)):
        flat, vals = reader.latent(j)
        max_act[j], mean_act[j] = vals.max(), vals.mean()
        top = flat[np.argsort(-vals, kind="stable")[:top_n]]
        share[j] = np.unique(flat_tokens[top], return_counts=True)[1].max() / top.size
    return max_act, mean_act, share


@pytest.mark.parametrize("top_n,chunk", [(50, 1 << 18), (3, 1 << 18), (5, 7)])
def test_stats_equal_per_latent_reference(tmp_path, subject, topk_sae, rows, top_n, chunk):
    reader = _build(tmp_path, subject, topk_sae, rows)
    # Coarse fp16-like values make ties, which must go to the earlier token.
    value = np.load(tmp_path / "index" / "value.npy", mmap_mode="r+")
    value[:] = np.round(value * 4) / 4 + 0.25
    del value
    cache._write_stats(tmp_path, reader.manifest, top_n, chunk=chunk)
    reader = cache.CacheReader(tmp_path)
    max_act, mean_act, share = _reference_stats(reader, top_n)
    np.testing.assert_array_equal(reader.stats.count, np.diff(reader.ptr))
    np.testing.assert_array_equal(reader.stats.max_act, max_act.astype(np.float32))
    np.testing.assert_allclose(reader.stats.mean_act, mean_act, rtol=1e-6)
    np.testing.assert_array_equal(reader.stats.top_token_share, share.astype(np.float32))


def _later_clock(monkeypatch):
    """Run the rest of the test a day later by the wall clock (zip members carry a date)."""
    import time

    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 86_400)


def _stats_fields(stats):
    return {"count": stats.count, "max_act": stats.max_act, "mean_act": stats.mean_act,
            "top_token_share": stats.top_token_share}


def test_stats_rebuilt_if_missing(tmp_path, subject, topk_sae, rows, monkeypatch):
    reader = _build(tmp_path, subject, topk_sae, rows)
    before, stats_bytes = _stats_fields(reader.stats), (tmp_path / "stats.npz").read_bytes()
    (tmp_path / "stats.npz").unlink()  # stopped after the index, before the stats
    _later_clock(monkeypatch)
    rebuilt = _build(tmp_path, subject, topk_sae, rows).stats
    for name, arr in _stats_fields(rebuilt).items():
        assert arr.dtype == before[name].dtype, name
        np.testing.assert_array_equal(arr, before[name], err_msg=name)
    assert rebuilt.n_tokens == reader.stats.n_tokens
    assert (tmp_path / "stats.npz").read_bytes() == stats_bytes


def _cache_files(root):
    """Bytes of every file of a finished cache, by path relative to it."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("stop", ["mid_index", "before_rename", "in_stats", "stale_old_index"])
def test_rerun_after_crash_in_index_build_is_identical(tmp_path, subject, topk_sae, rows,
                                                       monkeypatch, stop):
    _build(tmp_path / "clean", subject, topk_sae, rows)
    crashed = tmp_path / "crashed"
    with monkeypatch.context() as m:
        if stop == "mid_index":  # killed while filling index.tmp/, after its first shard
            real_iter = cache._iter_shards

            def dying_iter(cache_dir, manifest):
                for i, s in enumerate(real_iter(cache_dir, manifest)):
                    if i == 1:
                        raise KeyboardInterrupt
                    yield s
            m.setattr(cache, "_iter_shards", dying_iter)
        elif stop == "before_rename":  # index.tmp/ complete, not yet renamed to index/
            real_replace = cache.os.replace

            def dying_replace(src, dst):
                if Path(src).name == "index.tmp":
                    raise KeyboardInterrupt
                real_replace(src, dst)
            m.setattr(cache.os, "replace", dying_replace)
        else:  # "in_stats", "stale_old_index": index/ done, killed writing stats.npz.tmp
            def dying_stats(cache_dir, manifest, top_n, chunk=1 << 18):
                (cache_dir / "stats.npz.tmp").write_bytes(b"half the stats")
                raise KeyboardInterrupt
            m.setattr(cache, "_write_stats", dying_stats)
        with pytest.raises(KeyboardInterrupt):
            _build(crashed, subject, topk_sae, rows)
    if stop == "stale_old_index":  # and an older run left a half index.tmp/ with a half file
        (crashed / "index.tmp").mkdir()
        (crashed / "index.tmp" / "flat.npy").write_bytes(b"half")
    assert (crashed / "index.tmp").is_dir() == (stop != "in_stats")
    assert not (crashed / "stats.npz").exists()
    _later_clock(monkeypatch)
    resumed = _build(crashed, subject, topk_sae, rows)
    clean = _cache_files(tmp_path / "clean")
    assert "stats.npz" in clean and "index/ptr.npy" in clean
    assert sorted(_cache_files(crashed)) == sorted(clean)  # no index.tmp/, no *.tmp left
    for name, data in clean.items():
        assert _cache_files(crashed)[name] == data, name
    assert resumed.stats.count.sum() == resumed.stats.n_tokens * topk_sae.cfg.k


def test_fingerprint_covers_whole_tensors():
    from conftest import random_topk_sae

    a, b = random_topk_sae(d_sae=1024, seed=5), random_topk_sae(d_sae=1024, seed=5)
    assert a.W_dec.numel() * 4 > 2 * (1 << 20)  # past the first MiB of the tensor
    assert cache.sae_fingerprint(a) == cache.sae_fingerprint(b)  # same weights, same hash
    with torch.no_grad():
        b.W_dec[-1, -1] += 1.0  # the last value of W_dec only
    assert cache.sae_fingerprint(a) != cache.sae_fingerprint(b)
    with torch.no_grad():
        b.W_dec[-1, -1] -= 1.0
        b.b_dec[-1] = 1e-6  # a small tensor's last value
    assert cache.sae_fingerprint(a) != cache.sae_fingerprint(b)


def test_latent_browser_opens_on_a_latent_that_is_not_dense(tmp_path, subject, topk_sae, rows):
    from autointerp import widgets

    reader = _build(tmp_path, subject, topk_sae, rows)
    view = widgets.latent_browser(reader, subject.tokenizer, n_windows=2, width=16)
    pick, typed = view.children[0].children
    rate = reader.stats.firing_rate
    assert pick.value == typed.value and rate[typed.value] <= 0.05
    sparse = [j for j in np.argsort(-reader.stats.count, kind="stable") if 0 < rate[j] <= 0.05]
    assert typed.value == sparse[0]  # the most frequent latent that is not dense
    assert f"latent {typed.value}" in view.children[1].value
