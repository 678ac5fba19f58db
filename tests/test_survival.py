"""Runs that survive: LLM faults at volume, the spending cap and its dry run, the runner's report
of a failed chapter."""
from __future__ import annotations

import json
from collections import Counter

import pytest
from fault_server import FAULT_KINDS, FaultServer
from test_detection import VOCAB, Judge, decode, make_examples

from autointerp.llm import Budget, ChatRequest, Endpoint, LLMClient
from autointerp.scorers import run_with_control
from autointerp.scorers.detection import DetectionScorer

WORDS = [1, 2, 7, 9, 12]  # cat, dog, big, home, owl


def _latents(n: int):
    expl = {j: f"Mentions of the word {VOCAB[WORDS[j % len(WORDS)]].strip()}" for j in range(n)}
    exs = {j: make_examples(j, WORDS[j % len(WORDS)], seed=j) for j in range(n)}
    return expl, exs


def _detection(srv: FaultServer, expl, exs, **kw):
    client = LLMClient(Endpoint(base_url=srv.base_url, model="fake-judge"), None, concurrency=8,
                       backoff_base_s=0.01, backoff_max_s=0.05, **kw)
    return run_with_control(DetectionScorer(client, decode=decode), expl, exs, seed=0), client


def test_faults_at_volume_lose_no_latent_and_change_no_good_score(tmp_path):
    """>= 500 calls with 20% faults of every kind: nothing crashes, every latent has its results,
    every example that could not be judged says why, retries are bounded, and a latent whose calls
    all came through scores exactly as in a fault-free run."""
    expl, exs = _latents(90)
    with Judge(lifetime_s=600) as clean_srv:
        clean, _ = _detection(clean_srv, expl, exs, timeout_s=30, max_tries=4)
    max_tries = 4
    with Judge(fault_rate=0.2, seed=7, lifetime_s=600) as srv:
        faulty, client = _detection(srv, expl, exs, timeout_s=1.0, max_tries=max_tries)
        n_calls, faults = srv.n_calls, dict(srv.faults)
    assert n_calls >= 500 and set(faults) == set(FAULT_KINDS), faults
    prompts = clean_srv.n_calls  # one call per prompt when nothing fails
    assert n_calls <= prompts * max_tries  # retries bounded
    for run_ in (faulty.real, faulty.control):
        assert sorted(r.latent for r in run_) == sorted(expl)  # 0 lost latents
        for r in run_:
            failed = {e.example_id for e in r.examples if e.prediction is None}
            assert failed == {f["example_id"] for f in r.usage["failures"]}  # each with its reason
            assert all(f["reason"] for f in r.usage["failures"])
    good = 0
    for before, after in zip(clean.real + clean.control, faulty.real + faulty.control):
        assert (before.latent, before.control) == (after.latent, after.control)
        if after.metrics.n_failed == 0:
            good += 1
            assert after.metrics == before.metrics
    reasons = Counter(f["reason"].split(":")[0][:40] for r in faulty.real + faulty.control for f in r.usage["failures"])
    summary = {"calls": n_calls, "prompts": prompts, "faults": faults, "retries": client.ledger.retries,
               "failed_calls": client.ledger.failures, "latents": len(expl), "results": len(faulty.real) * 2,
               "results_unchanged": good, "latents_lost": 0, "failure_reasons": dict(reasons)}
    (tmp_path / "fault_run.json").write_text(json.dumps(summary, indent=1))
    print("fault run:", json.dumps(summary))
    assert good >= len(expl)  # most results came through whole


def ask(i: int) -> ChatRequest:
    return ChatRequest(messages=(("user", f"question {i} " + "x" * 300),), max_tokens=50)


def test_a_call_cap_stops_cleanly_keeps_what_finished_and_never_pays_twice(tmp_path, capsys):
    reqs = [ask(i) for i in range(6)]
    with FaultServer() as srv:
        ep = Endpoint(base_url=srv.base_url, model="m")
        capped = LLMClient(ep, tmp_path, budget=Budget(max_calls=3), concurrency=1).run(reqs)
        assert srv.n_calls == 3 and [r.ok for r in capped] == [True] * 3 + [False] * 3
        assert all("spending cap: max_calls=3" in r.error for r in capped[3:])
        out = capsys.readouterr().out
        assert "6 requests: 0 answered by the cache, 6 to send" in out and "max_calls=3" in out
        again = LLMClient(ep, tmp_path, budget=Budget(max_calls=10), concurrency=1)
        assert again.estimate(reqs).to_send == 3  # what the cap stopped, nothing else
        resumed = again.run(reqs)
        assert srv.n_calls == 6 and all(r.ok for r in resumed)  # the first three came from the cache
        assert [r.text for r in resumed[:3]] == [r.text for r in capped[:3]]


def test_a_cost_cap_is_never_passed_and_needs_prices(tmp_path):
    reqs = [ask(i) for i in range(6)]
    with FaultServer() as srv:
        priced = Endpoint(base_url=srv.base_url, model="m", price_prompt_per_mtok=1000.0,
                          price_completion_per_mtok=2000.0)
        one = LLMClient(priced, None).estimate(reqs[:1]).cost_usd  # ~0.2 USD a request at these prices
        client = LLMClient(priced, None, budget=Budget(max_cost=2.5 * one), concurrency=1)
        resps = client.run(reqs)
        assert [r.ok for r in resps] == [True, True, False, False, False, False]
        assert "max_cost" in resps[2].error and client.committed_usd <= 2.5 * one
        assert client.ledger.cost_usd <= 2.5 * one  # what was really spent, by the served usage
        with pytest.raises(ValueError, match="needs the endpoint's prices"):
            LLMClient(Endpoint(base_url=srv.base_url, model="m"), None, budget=Budget(max_cost=1.0))


def test_a_dry_run_prints_the_estimate_and_calls_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("AUTOINTERP_LLM_DRY_RUN", "1")
    with FaultServer() as srv:
        ep = Endpoint(base_url=srv.base_url, model="m", price_prompt_per_mtok=0.15, price_completion_per_mtok=0.6)
        resps = LLMClient(ep, tmp_path).run([ask(i) for i in range(4)], desc="explaining")
        assert srv.n_calls == 0 and all("dry run" in r.error for r in resps)
    out = capsys.readouterr().out
    assert "[explaining] 4 requests" in out and "DRY RUN" in out and "$" in out
    assert not list(tmp_path.rglob("*.json"))


def test_budget_settings_say_what_to_change(monkeypatch):
    monkeypatch.setenv("AUTOINTERP_LLM_MAX_CALLS", "lots")
    with pytest.raises(ValueError, match="AUTOINTERP_LLM_MAX_CALLS='lots' is not a number"):
        Budget.from_env()
    with pytest.raises(ValueError, match="max_calls must be >= 0"):
        Budget(max_calls=-1)
