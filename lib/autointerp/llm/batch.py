"""The OpenAI Batch API as a way to send a stage's requests: submit, poll, resume.

With ``Endpoint.batch`` (``AUTOINTERP_LLM_BATCH=1``), ``LLMClient.run`` first sends every request
the cache cannot answer as one batch job: the requests go up as a JSONL file
(``custom_id`` = the request's cache key, ``body`` = the same chat completion the client would
send), the job is created, polled until it ends, and each answer lands in the response cache. The
normal path then reads them from there; a request the batch could not answer is sent live (with
retries), so nothing is lost. Hosted batch APIs cost about half and take up to 24 hours.

Resume: the job's ids are kept in ``<llm_cache>/batches/<digest>.json`` as soon as each exists, so
a process killed while waiting polls the same job when rerun instead of paying for it twice; a kill
between the upload and the job's creation finds the job by its input file. The file goes once the
answers are cached.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .client import ChatResponse
from .wire import Retry, parse_chat, request_body

if TYPE_CHECKING:
    from .client import ChatRequest, LLMClient

TERMINAL = ("completed", "failed", "expired", "cancelled")
ENDPOINT = "/v1/chat/completions"


class BatchFailed(RuntimeError):
    """The batch job ended without answering (failed, expired, cancelled): what it answered is cached."""


def _answer(key: str, req: "ChatRequest", data: object) -> ChatResponse | None:
    """One batch answer (a chat completion's JSON) as the response to ``req``; None when it is not
    a usable answer (the live path then sends ``req``)."""
    try:
        text, top, usage = parse_chat(data, req.logprobs)
    except Retry:
        return None
    return ChatResponse(key, text, top, *usage, cached=False, logprobs_fallback=req.logprobs and not top, attempts=1)


def _write_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def state_path(client: "LLMClient", keys: Sequence[str]) -> Path:
    digest = hashlib.sha256("\n".join(sorted(keys)).encode()).hexdigest()[:16]
    return client.cache_dir / "batches" / f"{digest}.json"


def prefill(client: "LLMClient", reqs: Sequence["ChatRequest"], *, poll_s: float = 30.0,
            max_wait_s: float = 26 * 3600, desc: str = "batch") -> int:
    """Answer every uncached request of ``reqs`` through one batch job into the client's cache;
    returns how many answers it cached. Needs the client's cache (that is where answers go)."""
    import openai

    if client.cache_dir is None:
        raise ValueError("The batch API needs the LLM response cache (cache_dir): answers arrive there.")
    model = client.endpoint.model
    todo: dict[str, "ChatRequest"] = {}
    for r in reqs:
        k = r.key(model)
        if k not in todo and client._cache_get(k) is None:
            todo[k] = r
    if not todo:
        return 0
    api = openai.OpenAI(base_url=client.endpoint.base_url, api_key=client._api_key, timeout=client.timeout_s)
    path = state_path(client, list(todo))
    state = _submit(api, client, todo, path, desc)
    job = _wait(api, state, poll_s, max_wait_s, desc)
    cached = _collect(api, client, job, todo)
    path.unlink(missing_ok=True)
    if job.status != "completed":
        raise BatchFailed(f"batch {job.id} ended {job.status}; {cached} of {state['n']} answers were cached. "
                          "Rerun to submit the rest as a new batch, or unset AUTOINTERP_LLM_BATCH to send them live.")
    print(f"{desc}: batch {job.id} answered {cached} of {state['n']}"
          + (f"; {state['n'] - cached} go live" if cached < state["n"] else ""), flush=True)
    return cached


def _submit(api, client: "LLMClient", todo: dict[str, "ChatRequest"], path: Path, desc: str) -> dict:
    """The job's state: resumed from ``path``, else uploaded and created, each id noted as it exists."""
    state = json.loads(path.read_text()) if path.exists() else {}
    if state.get("batch_id"):
        print(f"{desc}: resuming batch {state['batch_id']} ({state['n']} requests)", flush=True)
        return state
    if not state.get("input_file_id"):
        model = client.endpoint.model
        lines = [json.dumps({"custom_id": k, "method": "POST", "url": ENDPOINT,
                             "body": request_body(model, r, r.logprobs)}) for k, r in todo.items()]
        for r in todo.values():  # a batch counts against the spending cap as the live calls would
            over = client.spending.refusal(r.messages, r.max_tokens)
            if over:
                raise BatchFailed(f"Not submitted: {over}")
            client.spending.spend(r.messages, r.max_tokens)
        up = api.files.create(file=("requests.jsonl", io.BytesIO("\n".join(lines).encode())), purpose="batch")
        state = {"input_file_id": up.id, "n": len(todo), "model": model}
        _write_state(path, state)
    # a process killed between the upload and noting the job's id: the job may exist already
    job = next((b for b in api.batches.list(limit=100) if b.input_file_id == state["input_file_id"]), None)
    if job is None:
        job = api.batches.create(input_file_id=state["input_file_id"], endpoint=ENDPOINT,
                                 completion_window="24h", metadata={"autointerp": path.stem})
    state["batch_id"] = job.id
    _write_state(path, state)
    print(f"{desc}: submitted {len(todo)} requests as batch {job.id}", flush=True)
    return state


def _wait(api, state: dict, poll_s: float, max_wait_s: float, desc: str):
    """Poll the job until it ends (a progress bar of its answered requests)."""
    from tqdm.auto import tqdm

    t0 = time.monotonic()
    with tqdm(total=state["n"], desc=f"{desc} (batch)") as bar:
        while True:
            job = api.batches.retrieve(state["batch_id"])
            if job.request_counts is not None:
                bar.n = job.request_counts.completed + job.request_counts.failed
                bar.refresh()
            if job.status in TERMINAL:
                return job
            if time.monotonic() - t0 > max_wait_s:
                raise BatchFailed(f"batch {job.id} still {job.status} after {max_wait_s / 3600:.0f} h; "
                                  "rerun to keep waiting for it (its ids are kept).")
            time.sleep(poll_s)


def _collect(api, client: "LLMClient", job, todo: dict[str, "ChatRequest"]) -> int:
    """Cache every usable answer of the ended job; returns how many (the rest go live)."""
    if not job.output_file_id:
        return 0
    cached = 0
    for line in api.files.content(job.output_file_id).text.splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        req = todo.get(item.get("custom_id"))
        resp = item.get("response") or {}
        if req is None or item.get("error") or resp.get("status_code") != 200:
            continue  # not answered: the live path sends it
        answer = _answer(item["custom_id"], req, resp.get("body"))
        if answer is not None:
            client._cache_put(req, answer)
            cached += 1
    return cached
