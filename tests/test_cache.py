from __future__ import annotations

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
    wins = reader.top_windows(j, n=5, width=width, tokenizer=subject.tokenizer)
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
