"""nnsight remote execution as a setting, tested as far as it goes without NDIF: the setting, the
key from the environment only, a clear error for each way it cannot run (no key, a local model,
NDIF unreachable, a model NDIF does not run, the hub unreachable), and the key never leaking into
messages or run.json. A local server on 127.0.0.1 answers NDIF's ``/status`` in its format.
Device maps: ``device="auto"`` places the model with accelerate and caches the same bytes."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from autointerp import config, models, remote, saes

SECRET = "ndif-test-secret-0f9e8d"
STATUS = {"deployments": {
    "a": {"repo_id": "google/gemma-2-9b", "application_state": "RUNNING", "level": "HOT"},
    "b": {"repo_id": "meta-llama/Llama-3.1-70B", "application_state": "DEPLOYING", "level": "WARM"},
}}


@pytest.fixture()
def ndif(monkeypatch):
    """A stand-in for NDIF's status endpoint; nnsight's host points at it."""
    from nnsight import CONFIG

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps(STATUS).encode() if self.path == "/status" else b"{}"
            self.send_response(200 if self.path == "/status" else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setattr(CONFIG.API, "HOST", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv(remote.KEY_ENV, SECRET)
    yield server
    server.shutdown()


def test_remote_is_a_run_setting_and_never_stores_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv(remote.KEY_ENV, SECRET)
    cfg = config.resolve("smoke", tmp_path / "r", remote=True, model="google/gemma-2-9b")
    assert cfg.remote is True
    path = config.save(cfg)
    assert SECRET not in path.read_text() and SECRET not in repr(cfg)
    assert config.load(tmp_path / "r").remote is True


def test_missing_key_is_one_clear_error(monkeypatch):
    monkeypatch.delenv(remote.KEY_ENV, raising=False)
    with pytest.raises(remote.RemoteUnavailable, match="environment variable NDIF_API_KEY"):
        models.load("google/gemma-2-9b", remote=True)


def test_local_models_do_not_go_remote():
    for spec in ("embedded", "/some/folder"):
        with pytest.raises(ValueError, match="is local: set remote=False"):
            models.load(spec, remote=True)


def test_unhosted_and_deploying_models_are_named_with_what_runs(ndif):
    with pytest.raises(remote.RemoteUnavailable) as err:
        models.load("EleutherAI/pythia-70m", remote=True)
    msg = str(err.value)
    assert "is not hosted on NDIF" in msg and "google/gemma-2-9b" in msg and SECRET not in msg
    with pytest.raises(remote.RemoteUnavailable, match="'meta-llama/Llama-3.1-70B' is deploying"):
        models.load("meta-llama/Llama-3.1-70B", remote=True)


def test_hosted_model_needs_the_hub_for_its_config(ndif, monkeypatch):
    monkeypatch.setattr(remote, "hub_reachable", lambda: False)
    with pytest.raises(models.HubUnreachable, match="config and tokenizer") as err:
        models.load("google/gemma-2-9b", remote=True)
    assert SECRET not in str(err.value)


def test_unreachable_ndif(monkeypatch):
    from nnsight import CONFIG

    monkeypatch.setenv(remote.KEY_ENV, SECRET)
    monkeypatch.setattr(CONFIG.API, "HOST", "http://127.0.0.1:9")  # discard port: refused
    with pytest.raises(remote.RemoteUnavailable, match="Cannot reach NDIF at http://127.0.0.1:9") as err:
        models.load("google/gemma-2-9b", remote=True)
    assert SECRET not in str(err.value)


def test_stages_that_need_weights_say_so():
    subject = models.load("embedded")
    subject.remote = True  # as load_remote builds it (the weights would be meta tensors)
    with pytest.raises(ValueError, match="Training an SAE needs the model's weights on this machine"):
        saes.train_topk(subject, np.zeros((40, 8), np.int32), "model.layers.2", "/nonexistent", width=8, k=2)
    from autointerp import steering
    from autointerp.scorers.surprisal import SurprisalScorer

    with pytest.raises(ValueError, match="Steering needs the model's weights"):
        steering.run_all(subject, None, "model.layers.2", None, [1])
    with pytest.raises(ValueError, match="The surprisal scorer needs the model's weights"):
        SurprisalScorer(subject)


def test_device_map_auto_caches_the_same_codes(monkeypatch):
    """``device="auto"`` asks transformers for ``device_map="auto"`` (accelerate places the layers:
    here all on the CPU, the only device); the SAE follows ("auto" -> the first GPU, else the
    CPU) and the codes equal a plain load's."""
    import torch
    from transformers import AutoModelForCausalLM

    from autointerp import cache

    asked = []
    real = AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kw):  # the real loader, with its device_map noted
        asked.append(kw.get("device_map"))
        return real(cls, *args, **kw)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    plain, mapped = models.load("embedded"), models.load("embedded", device="auto")
    assert asked == [None, "auto"]
    sae = saes.random_sae(plain.hook_dim("model.layers.3"), 64, 4, seed=1)
    sae_auto = saes.random_sae(mapped.hook_dim("model.layers.3"), 64, 4, seed=1).to(
        "cuda" if torch.cuda.is_available() else "cpu")
    ids = torch.arange(1, 33).reshape(2, 16)
    a = cache.sparse_encode(sae, models.hooked_output(plain, "model.layers.3", ids), 0, 1)
    b = cache.sparse_encode(sae_auto, models.hooked_output(mapped, "model.layers.3", ids), 0, 1)
    assert all(np.array_equal(a[k], b[k]) for k in a)
