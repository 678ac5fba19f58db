"""The catalogue of bad inputs: each gives one clear error that says what to change, and nothing
already written is lost (README: "When something is wrong"). Each test names its input."""
from __future__ import annotations

import errno
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import random_topk_sae
from fault_server import FaultServer

from autointerp import cache, config, corpus, examples, models, results, run, saes
from autointerp.llm import ChatRequest, Endpoint, LLMClient
from autointerp.scorers.detection import DetectionScorer

HOOK = "model.layers.4"


def _cache(tmp_path, subject, rows, sae=None):
    return cache.build_cache(tmp_path / "cache", subject, sae if sae is not None else random_topk_sae(), HOOK, rows, sae_id="random",
                             corpus_hash="test", batch_size=4, shard_rows=8, progress=False)


def test_unknown_model_folder():
    with pytest.raises(ValueError, match="'/no/such/model' does not exist"):
        models.load("/no/such/model")


def test_hub_unreachable(monkeypatch):
    monkeypatch.setattr(models, "hub_reachable", lambda *a, **k: False)
    with pytest.raises(models.HubUnreachable, match="hf download some-org/some-model --local-dir"):
        models.load("some-org/some-model")


def test_unknown_hook(subject):
    with pytest.raises(ValueError, match=r"Unknown hook 'model.layers.3.nonsense'.*Close matches: \['model.layers.3"):
        subject.module("model.layers.3.nonsense")


def test_layer_out_of_range(subject):
    with pytest.raises(ValueError, match=r"Layer 99 .* out of range: embedded has 30 layers \(0-29\)"):
        subject.module("model.layers.99")


def test_sae_d_in_mismatch(subject):
    with pytest.raises(ValueError, match="SAE d_in 100 != width 576 of model.layers.3"):
        saes.check_fits(saes.random_sae(100, 64, 4), subject, "model.layers.3")


def test_unknown_sae_lens_release_and_id():
    with pytest.raises(ValueError, match="Unknown sae-lens release 'gemma-scope-9b-pt-res-canonicall'.*Close: "
                                         r"\['gemma-scope-9b-pt-res-canonical'"):
        saes.load("sae-lens:gemma-scope-9b-pt-res-canonicall/layer_9/width_16k/canonical")
    with pytest.raises(ValueError, match="has no SAE 'layer_99/width_16k/canonical'"):
        saes.load("sae-lens:gemma-scope-9b-pt-res-canonical/layer_99/width_16k/canonical")


def test_empty_and_too_small_corpus(tmp_path, subject):
    with pytest.raises(ValueError, match="no .txt/.md/.rst files under .*: put text files there"):
        corpus.load_documents(f"textdir:{tmp_path}")
    (tmp_path / "a.txt").write_text("Only a few words here.")
    with pytest.raises(ValueError, match="has only .* tokens but n_tokens asks for .*: lower n_tokens to at most"):
        corpus.load_and_pack(f"textdir:{tmp_path}", subject.tokenizer, ctx_len=32, n_tokens=4096, seed=0)


def test_unknown_profile(tmp_path):
    with pytest.raises(ValueError, match=r"Unknown profile 'tiny'; choose one of \['smoke', 'demo', 'full', 'mini'\]"):
        config.resolve("tiny", tmp_path)


def test_latent_out_of_range_and_a_latent_that_never_fires(tmp_path, subject, rows):
    import torch

    sae = random_topk_sae()
    with torch.no_grad():  # latent 0 can never be among the top k
        sae.W_enc[:, 0] = 0.0
        sae.b_enc[0] = -1e6
    reader = _cache(tmp_path, subject, rows, sae)
    with pytest.raises(IndexError, match="latent 100000 out of range: this SAE has 256 latents"):
        reader.latent(100_000)
    assert reader.stats.count[0] == 0 and reader.top_windows(0) == []
    lex = examples.for_latent(reader, 0, examples.ExampleSettings(example_ctx_len=16, min_examples=1))
    assert lex.skipped and "0 activating windows" in lex.skipped_reason  # skipped with its reason, no crash


def test_unreachable_endpoint_fails_at_once_and_sends_nothing(tmp_path):
    client = LLMClient(Endpoint(base_url="http://127.0.0.1:9/v1", model="m"), tmp_path)
    with pytest.raises(ConnectionError, match=r"Cannot reach the LLM endpoint http://127.0.0.1:9/v1 .*Nothing was sent"):
        client.run([ChatRequest(messages=(("user", "hi"),))])
    assert client.ledger.calls == 0


def test_endpoint_without_logprobs_when_a_scorer_needs_them():
    with FaultServer() as srv:
        client = LLMClient(Endpoint(base_url=srv.base_url, model="m", supports_logprobs=False), None)
        with pytest.raises(ValueError, match="declared to serve no logprobs .*pass logprobs=False"):
            DetectionScorer(client, logprobs=True)
        DetectionScorer(client, logprobs=False)  # the binary scorer is fine


def test_run_dir_from_an_incompatible_earlier_run(tmp_path):
    cfg = config.resolve("smoke", tmp_path)
    config.save(cfg)
    (tmp_path / "sae").mkdir()
    before = (tmp_path / "run.json").read_text()
    with pytest.raises(ValueError, match="already holds results made with other settings .*sae_width.*Use a new run_dir"):
        config.save(config.resolve("smoke", tmp_path, sae_width=4096))
    assert (tmp_path / "run.json").read_text() == before  # nothing written is lost
    old = tmp_path / "scores.jsonl"
    old.write_text(json.dumps({"header": {"schema": "autointerp.scores/0", "kind": "scores"}}) + "\n")
    with pytest.raises(ValueError, match="is not one this version reads .*rerun the chapter that wrote it"):
        results.read(old)


def test_corrupted_cache_shard_is_named_and_only_it_is_redone(tmp_path, subject, rows):
    sae = random_topk_sae()
    reader = _cache(tmp_path, subject, rows, sae)
    counts = reader.stats.count.copy()
    shard = sorted((tmp_path / "cache" / "shards").iterdir())[1]
    shard.write_bytes(shard.read_bytes()[:100])  # a damaged file, as a disk fault leaves it
    for p in [tmp_path / "cache" / "stats.npz", *(tmp_path / "cache" / "index").iterdir()]:
        p.unlink()
    (tmp_path / "cache" / "index").rmdir()
    with pytest.raises(ValueError, match=f"Cache shard {shard} is damaged .*delete that file and rerun"):
        _cache(tmp_path, subject, rows, sae)
    others = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "shards").iterdir() if p != shard}
    shard.unlink()  # what the message says to do
    again = _cache(tmp_path, subject, rows, sae)
    assert np.array_equal(again.stats.count, counts)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "cache" / "shards").iterdir() if p != shard} == others


def test_damaged_cache_index(tmp_path, subject, rows):
    _cache(tmp_path, subject, rows)
    (tmp_path / "cache" / "index" / "ptr.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="is damaged .*delete .*index.* and rerun notebooks/01_caching.ipynb"):
        cache.CacheReader(tmp_path / "cache")


def test_full_disk_during_a_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "scores" / "x.jsonl"
    results.write(path, "scores", [{"latent": 1}])
    before = path.read_text()
    real_open = Path.open

    class FullDisk:
        def __init__(self, f):
            self.f, self.n = f, 0

        def write(self, text):
            self.n += len(text)
            if self.n > 50:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(text)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def full(self, mode="r", *a, **k):
        f = real_open(self, mode, *a, **k)
        return FullDisk(f) if "w" in mode else f

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(OSError, match="No space left on device.*the previous x.jsonl is kept unchanged; free some space"):
        results.write(path, "scores", [{"latent": i, "text": "y" * 100} for i in range(10)])
    monkeypatch.undo()
    assert path.read_text() == before and not list(path.parent.glob("*.tmp"))


@pytest.mark.notebooks
def test_the_runner_reports_a_failed_chapter_in_a_few_lines(tmp_path, capsys):
    code = run.main(["--profile", "smoke", "--run-dir", str(tmp_path), "--only", "00", "-p", "hook=model.layers.99"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) <= 4, err
    assert "chapter 00_setup failed in cell" in err[0] and "out of range: embedded has 30 layers" in err[0]
    assert str(tmp_path / "notebooks" / "00_setup.ipynb") in err[-1]
    assert (tmp_path / "notebooks" / "00_setup.ipynb").exists()  # the full trace is kept there
    assert sys.exc_info() == (None, None, None)
