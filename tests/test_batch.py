"""The OpenAI Batch API path (``Endpoint.batch``): one job per stage's uncached requests, answers
into the response cache, a rerun sends nothing, a killed wait resumes the same job (never paid
twice), lines the job could not answer go live, and an expired job says what to do. The server
is tests/batch_server.py on 127.0.0.1, in OpenAI's wire format."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from autointerp.llm import ChatRequest, Endpoint, LLMClient
from autointerp.llm import batch
from autointerp.llm.wire import request_body
from batch_server import BatchServer

REQS = [ChatRequest((("user", f"question {i}: {'yes' if i % 2 else 'no'}"),), 4) for i in range(12)]
WANT = ["0", "1"] * 6


def client_for(server: BatchServer, cache: Path) -> LLMClient:
    return LLMClient(Endpoint(base_url=server.base_url, model="m", batch=True, batch_poll_s=0.01), cache,
                     concurrency=2, max_tries=2, backoff_base_s=0.01)


def test_one_job_answers_a_stage_and_a_rerun_sends_nothing(tmp_path):
    with BatchServer(polls=3) as s:
        out = client_for(s, tmp_path).run(REQS + REQS[:3])  # duplicates go once
        assert [r.text for r in out] == WANT + WANT[:3] and all(r.ok for r in out)
        assert (s.calls["upload"], s.calls["create"], s.calls["live"]) == (1, 1, 0)
        assert s.calls["retrieve"] >= 3
        lines = s.files["file-in-0"].decode().splitlines()
        assert len(lines) == 12 and json.loads(lines[0])["body"]["messages"][0]["content"].startswith("question 0")
        again = client_for(s, tmp_path).run(REQS)
        assert all(r.cached for r in again) and s.calls["create"] == 1
        assert not list((tmp_path / "batches").glob("*.json"))  # the job's ids go once it is cached


CHILD = """
import sys
from pathlib import Path
from autointerp.llm import ChatRequest, Endpoint, LLMClient
reqs = [ChatRequest((("user", f"question {i}: {'yes' if i % 2 else 'no'}"),), 4) for i in range(12)]
LLMClient(Endpoint(base_url=sys.argv[1], model="m", batch=True, batch_poll_s=0.01), Path(sys.argv[2])).run(reqs)
"""


def test_a_killed_wait_resumes_the_same_job(tmp_path):
    with BatchServer(polls=10 ** 9) as s:  # the job does not finish while the first process waits
        child = subprocess.Popen([sys.executable, "-c", CHILD, s.base_url, str(tmp_path)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (states := list((tmp_path / "batches").glob("*.json"))) or \
                "batch_id" not in json.loads(states[0].read_text()):
            assert child.poll() is None and time.monotonic() < deadline, "the child never created its job"
            time.sleep(0.05)
        while s.calls["retrieve"] < 3:  # it is polling
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        child.wait()
        s.polls = 0  # the job finishes now
        out = client_for(s, tmp_path).run(REQS)
        assert [r.text for r in out] == WANT
        assert (s.calls["upload"], s.calls["create"], s.calls["live"]) == (1, 1, 0)


def test_a_kill_between_upload_and_create_finds_the_job(tmp_path):
    with BatchServer(polls=0) as s:
        c = client_for(s, tmp_path)
        c.run(REQS[:2])  # another stage's job: the list has more than ours
        keys = [r.key("m") for r in REQS[2:]]
        path = batch.state_path(c, keys)
        # the killed process had uploaded its file and created the job, but not yet noted the job's id
        import openai

        api = openai.OpenAI(base_url=s.base_url, api_key="sk-local")
        lines = "\n".join(json.dumps({"custom_id": k, "method": "POST", "url": batch.ENDPOINT,
                                      "body": request_body("m", r, False)}) for k, r in zip(keys, REQS[2:]))
        up = api.files.create(file=("requests.jsonl", lines.encode()), purpose="batch")
        api.batches.create(input_file_id=up.id, endpoint=batch.ENDPOINT, completion_window="24h")
        path.write_text(json.dumps({"input_file_id": up.id, "n": len(keys), "model": "m"}))
        creates = s.calls["create"]
        out = client_for(s, tmp_path).run(REQS)
        assert [r.text for r in out] == WANT and s.calls["create"] == creates and s.calls["live"] == 0


def test_unanswered_lines_go_live_and_an_expired_job_says_what_to_do(tmp_path):
    with BatchServer(polls=1, fail_ids=3) as s:
        out = client_for(s, tmp_path / "a").run(REQS)
        assert [r.text for r in out] == WANT and s.calls["live"] == 3 and s.calls["create"] == 1
    with BatchServer(polls=1, end="expired") as s:
        with pytest.raises(batch.BatchFailed, match=r"ended expired; 6 of 12 answers were cached. Rerun"):
            client_for(s, tmp_path / "b").run(REQS)
        s.end = "completed"
        out = client_for(s, tmp_path / "b").run(REQS)
        assert [r.text for r in out] == WANT and s.calls["create"] == 2
        second = s.batches["batch_1"]["public"]["input_file_id"]
        assert len(s.files[second].decode().splitlines()) == 6  # only what the first job left


def test_batch_is_off_unless_asked(monkeypatch):
    from autointerp.llm import endpoint_from_env

    monkeypatch.setenv("AUTOINTERP_LLM_BASE_URL", "https://api.example.com/v1")
    monkeypatch.setenv("AUTOINTERP_LLM_MODEL", "m")
    assert endpoint_from_env().batch is False
    monkeypatch.setenv("AUTOINTERP_LLM_BATCH", "1")
    assert endpoint_from_env().batch is True
