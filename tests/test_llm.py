"""The LLM layer: retries, logprob fallback, response cache, ledger, and the local llama.cpp server."""
from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import pytest
from conftest import LLM_ENV_VARS
from fault_server import FaultServer

import autointerp
from autointerp.llm import ChatRequest, Endpoint, LLMClient, endpoint_from_env

# A generous timeout: an answer from the local fault server takes milliseconds, but a loaded
# machine can stall a thread for seconds, and a spurious timeout would change the attempt counts
# these tests assert. The tests that want a timeout use a short one against a server that HANGS
# (HANG: it answers only when the test closes it), so the timeout is certain however slow the
# machine, and a slow answer to a good request is never mistaken for one.
FAST = dict(timeout_s=30, max_tries=5, backoff_base_s=0.01, backoff_max_s=0.05)
HANG = ("sleep", 3600)  # FaultServer.stop() wakes the sleeper, so closing the server ends it


def ask(text: str, **kw) -> ChatRequest:
    return ChatRequest(messages=(("system", "Answer briefly."), ("user", text)), **kw)


def client_for(server: FaultServer, cache_dir: Path | None = None, **kw) -> LLMClient:
    opts = {**FAST, **kw}
    return LLMClient(Endpoint(base_url=server.base_url, model="fake-model"), cache_dir, **opts)


def test_retry_after_is_honoured_then_success():
    with FaultServer([("status", 429, {"Retry-After": "1"}), "good"]) as srv:
        client = client_for(srv)
        t0 = time.perf_counter()
        [resp] = client.run([ask("hello")])
        elapsed = time.perf_counter() - t0
    assert resp.error is None and resp.text == "echo: hello"
    assert resp.attempts == 2 and srv.n_calls == 2
    assert elapsed >= 1.0, f"Retry-After: 1 not honoured (retried after {elapsed:.2f} s)"
    assert client.ledger.retries == 1 and client.ledger.failures == 0


def test_transient_faults_are_retried_until_success():
    script = [("status", 500), "malformed", "empty", HANG, ("status", 502), "good"]
    with FaultServer(script) as srv:
        # 2 s: the one deliberate timeout costs 2 s, and the other five answers have 2 s each
        client = client_for(srv, max_tries=6, timeout_s=2.0)
        [resp] = client.run([ask("x")])
    assert resp.error is None and resp.text == "echo: x"
    assert resp.attempts == 6 and srv.n_calls == 6
    assert client.ledger.summary()["retries"] == 5


def test_gives_up_after_max_tries_without_raising(tmp_path):
    with FaultServer(default=("status", 503)) as srv:
        client = client_for(srv, cache_dir=tmp_path, max_tries=3)
        resps = client.run([ask("a"), ask("b")])
    for r in resps:
        assert r.text is None and r.attempts == 3
        assert "3 tries" in r.error and "HTTP 503" in r.error
    assert srv.n_calls == 6 and client.ledger.failures == 2
    assert not list(tmp_path.rglob("*.json")), "failed responses must not be cached"


def test_timeout_every_time_is_a_recorded_failure():
    with FaultServer(default=HANG) as srv:
        [resp] = client_for(srv, timeout_s=0.3, max_tries=2).run([ask("slow")])
        assert srv.n_calls == 2
    assert resp.text is None and "timeout" in resp.error and resp.attempts == 2


@pytest.mark.parametrize("code, hint", [(400, "HTTP 400"), (401, "API key in $OPENAI_API_KEY"),
                                        (404, "check base_url")])
def test_client_errors_are_not_retried(code, hint):
    with FaultServer(default=("status", code)) as srv:
        [resp] = client_for(srv).run([ask("x")])
    assert srv.n_calls == 1 and resp.attempts == 1 and hint in resp.error


def test_logprobs_served():
    with FaultServer() as srv:
        client = client_for(srv)
        [resp] = client.run([ask("one two", logprobs=True, top_logprobs=3)])
    assert srv.requests[0]["logprobs"] is True and srv.requests[0]["top_logprobs"] == 3
    assert not resp.logprobs_fallback and client.logprobs_supported is True
    assert len(resp.top_logprobs) == 3  # tokens "echo:", "one", "two"
    first = resp.top_logprobs[0]
    assert first[0] == ("echo:", -0.1) and len(first) == 1 + 3
    assert dict(first)["alt1"] == -2.0


@pytest.mark.parametrize("action", [("reject_logprobs", 500), ("reject_logprobs", 400), "no_logprobs"])
def test_logprobs_not_served_fall_back_and_are_recorded(action):
    with FaultServer(default=action) as srv:
        client = client_for(srv, max_tries=3)
        [r1] = client.run([ask("first", logprobs=True, top_logprobs=5)])
        [r2] = client.run([ask("second", logprobs=True, top_logprobs=5)])
    for r in (r1, r2):
        assert r.error is None and r.text.startswith("echo:")
        assert r.logprobs_fallback and r.top_logprobs is None
    assert client.logprobs_supported is False
    assert "logprobs" not in srv.requests[-1], "once learned, logprobs are no longer requested"
    assert client.ledger.logprobs_fallbacks == 2


def test_declared_without_logprobs_never_asks():
    with FaultServer() as srv:
        ep = Endpoint(base_url=srv.base_url, model="m", supports_logprobs=False)
        [r] = LLMClient(ep, None, **FAST).run([ask("x", logprobs=True)])
    assert r.logprobs_fallback and r.top_logprobs is None and "logprobs" not in srv.requests[0]


def test_cache_rerun_makes_no_calls_and_never_stores_the_key(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("AUTOINTERP_TEST_KEY", secret)
    reqs = [ask(f"q{i}", logprobs=i % 2 == 0, top_logprobs=2, tag="detection") for i in range(8)]
    reqs.append(reqs[3])  # a duplicate in the same run is sent once
    with FaultServer() as srv:
        ep = Endpoint(base_url=srv.base_url, model="fake-model", api_key_env="AUTOINTERP_TEST_KEY")
        first = LLMClient(ep, tmp_path, concurrency=3, **FAST)
        r1 = first.run(reqs)
        n_first = srv.n_calls
        second = LLMClient(ep, tmp_path, concurrency=3, **FAST)
        r2 = second.run(reqs)
        n_second = srv.n_calls - n_first
    assert n_first == 8 and n_second == 0
    assert [r.text for r in r1] == [f"echo: q{i}" for i in range(8)] + ["echo: q3"]
    assert [r.text for r in r2] == [r.text for r in r1]
    assert [r.top_logprobs for r in r2] == [r.top_logprobs for r in r1]
    assert all(r.cached and r.attempts == 0 for r in r2)
    assert second.ledger.cache_hits == 9 and second.ledger.calls == 0
    assert first.ledger.summary()["by_tag"]["detection"]["calls"] == 8
    assert srv.headers[0]["authorization"] == f"Bearer {secret}"  # the key was used ...
    files = list(tmp_path.rglob("*.json"))
    assert len(files) == 8 and all(f.parent.name == f.stem[:2] for f in files)
    for f in files:  # ... and is nowhere on disk or in reprs
        assert secret not in f.read_text()
    assert secret not in repr(first) and secret not in repr(first.ledger.summary())


def test_run_inside_a_running_event_loop():
    with FaultServer() as srv:
        client = client_for(srv)

        async def notebook_cell():
            return client.run([ask("a"), ask("b")])  # what a Jupyter cell does

        resps = asyncio.run(notebook_cell())
        again = client.run([ask("c")])  # and again from plain code afterwards
    assert [r.text for r in resps + again] == ["echo: a", "echo: b", "echo: c"]


def test_request_key_and_validation():
    a = ask("x", tag="explain")
    assert a.key("m") == ask("x", tag="detection").key("m")  # the tag is a label only
    assert a.key("m") != a.key("m2") != ask("x", seed=1).key("m")
    assert a.key("m") != ask("x", temperature=0.5).key("m")
    listy = ChatRequest(messages=[["system", "Answer briefly."], ["user", "x"]])
    assert listy == ask("x") and hash(listy) == hash(ask("x")) and listy.key("m") == a.key("m")
    with pytest.raises(ValueError, match="roles"):
        ChatRequest(messages=(("robot", "hi"),))


def test_ledger_costs_and_frame():
    with FaultServer() as srv:
        ep = Endpoint(base_url=srv.base_url, model="m", price_prompt_per_mtok=1.0,
                      price_completion_per_mtok=2.0)
        client = LLMClient(ep, None, **FAST)
        client.run([ask("one two", tag="explain"), ask("three", tag="detection")])
    s = client.ledger.summary()
    assert s["prompt_tokens"] == 20 and s["completion_tokens"] == 3 + 2
    assert s["cost_usd"] == pytest.approx((20 * 1.0 + 5 * 2.0) / 1e6)
    frame = client.ledger.to_frame()
    assert set(frame.index) == {"explain", "detection", "total"} and frame.loc["total", "calls"] == 2
    assert "calls=2" in repr(client.ledger)
    assert client_for(srv).ledger.cost_usd is None  # no prices, no cost


def test_conftest_clears_every_llm_variable_the_library_reads():
    # conftest's autouse fixture deletes LLM_ENV_VARS for every test; the list must name every
    # endpoint variable the library reads, or a machine's own settings could reach a remote API.
    src = "\n".join(p.read_text() for p in Path(autointerp.__file__).parent.rglob("*.py"))
    read = set(re.findall(r"[\"'](AUTOINTERP_LLM_[A-Z_]+|OPENAI_[A-Z_]+)[\"']", src))
    assert read and read <= set(LLM_ENV_VARS), sorted(read - set(LLM_ENV_VARS))
    assert [v for v in LLM_ENV_VARS if v in os.environ] == []
    assert endpoint_from_env() is None


def test_endpoint_from_env(monkeypatch):
    assert endpoint_from_env() is None  # conftest cleared the environment's settings
    monkeypatch.setenv("OPENAI_BASE_URL", "https://openrouter.ai/api/v1/")
    with pytest.raises(ValueError, match="AUTOINTERP_LLM_MODEL"):
        endpoint_from_env()
    monkeypatch.setenv("AUTOINTERP_LLM_MODEL", "some/model")
    monkeypatch.setenv("AUTOINTERP_LLM_API_KEY_ENV", "OPENROUTER_API_KEY")
    monkeypatch.setenv("AUTOINTERP_LLM_PRICE_PROMPT", "0.15")
    monkeypatch.setenv("AUTOINTERP_LLM_LOGPROBS", "0")
    ep = endpoint_from_env()
    assert ep == Endpoint("https://openrouter.ai/api/v1", "some/model", "OPENROUTER_API_KEY", 0.15,
                          None, False)
    assert not ep.is_local
    from autointerp.llm import open_endpoint, running_servers

    with open_endpoint() as got:  # configured: no local server is started
        assert got == ep and running_servers() == []
    with open_endpoint("http://127.0.0.1:9/v1", "explicit", "MY_KEY") as got:  # explicit wins
        assert (got.base_url, got.model, got.api_key_env) == ("http://127.0.0.1:9/v1", "explicit", "MY_KEY")
    with pytest.raises(ValueError, match="llm_model is not"):
        with open_endpoint("http://127.0.0.1:9/v1"):
            pass
    monkeypatch.setenv("AUTOINTERP_LLM_LISTS", "0")
    monkeypatch.setenv("AUTOINTERP_LLM_CONTEXT", "8192")
    caps = endpoint_from_env()
    assert not caps.lists and caps.context_tokens == 8192 and not caps.embedded
    monkeypatch.setenv("AUTOINTERP_LLM_LISTS", "maybe")
    with pytest.raises(ValueError, match="AUTOINTERP_LLM_LISTS='maybe': use 1 or 0"):
        endpoint_from_env()
    monkeypatch.delenv("AUTOINTERP_LLM_LISTS")
    monkeypatch.delenv("OPENAI_BASE_URL")
    with pytest.raises(ValueError, match="no base URL"):
        endpoint_from_env()


def test_local_endpoint_without_key_gets_a_dummy(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer() as srv:
        client = client_for(srv)
        client.run([ask("x")])
    assert srv.headers[0]["authorization"] == "Bearer sk-local"


@pytest.mark.slow
def test_local_llama_server_chat_and_logprobs(tmp_path):
    from autointerp.llm import local_server, running_servers

    with local_server(n_ctx=1024) as ep:
        [srv] = running_servers()
        pid = srv.pid
        assert ep.base_url == f"http://127.0.0.1:{srv.port}/v1" and ep.supports_logprobs
        # the server says what its model can do: the embedded 135M model cannot answer lists
        assert ep.embedded and not ep.lists and ep.context_tokens == 1024
        client = LLMClient(ep, tmp_path, timeout_s=60, max_tries=2)
        r_lp, r_plain = client.run([
            ChatRequest(messages=(("user", "Name one colour."),), max_tokens=6, logprobs=True,
                        top_logprobs=5, tag="lp"),
            ChatRequest(messages=(("user", "Name one animal."),), max_tokens=6, tag="plain")])
    assert r_lp.error is None and r_plain.error is None, (r_lp.error, r_plain.error)
    assert r_lp.text.strip() and r_plain.text.strip()
    assert not r_lp.logprobs_fallback and r_lp.top_logprobs
    assert all(len(tok) == 1 + 5 for tok in r_lp.top_logprobs)
    assert all(lp <= 0 for tok in r_lp.top_logprobs for _, lp in tok)
    assert r_plain.top_logprobs is None and r_lp.completion_tokens <= 6
    assert running_servers() == []
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_local_server_that_dies_reports_its_log(tmp_path):
    from autointerp.llm import local_server, running_servers

    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a gguf file")
    with pytest.raises(RuntimeError, match="exited with code .* before it was ready") as err:
        with local_server(bogus, ready_timeout_s=60, log_path=tmp_path / "server.log"):
            pass
    assert str(tmp_path / "server.log") in str(err.value) and running_servers() == []
