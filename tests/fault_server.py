"""A scripted, fault-injecting OpenAI-compatible chat server for tests (stdlib only).

Each POST /v1/chat/completions (or /v1/completions, a plain text completion: "prompt" in, "text"
out) consumes the next action of the script (then "good" forever):
  ("good",)                  a chat completion; logprobs served when the request asks for them
  ("good", text)             the same with a given text
  ("status", code, headers)  an error status with an OpenAI-style JSON error body
  ("sleep", seconds)         wait, then answer good (longer than the client timeout = a timeout)
  ("malformed",)             200 with a body that is not JSON
  ("empty",)                 200 with "choices": []
  ("no_logprobs",)           a good answer that never carries logprobs
  ("reject_logprobs", code)  that status if the request asks for logprobs, else a good answer
  ("truncated",)             200 with the good answer cut in half
  ("wrong_length",)          200 with a list answer one element short
  ("drop",)                  the connection closed without any response
A string action is shorthand for a 1-tuple. The server stops itself after `lifetime_s`.
With ``fault_rate`` > 0, every request the script does not cover is, with that probability (seeded),
one fault drawn uniformly from ``FAULT_KINDS``; ``faults`` counts what was injected. ``delay_s``:
every answer waits that long first (latency).
"""
from __future__ import annotations

import json
import threading
import time
import random
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


FAULT_KINDS: dict[str, Any] = {  # kind -> action; "timeout" sleeps longer than the client waits
    "timeout": ("sleep", 3.0), "429": ("status", 429, {"retry-after-ms": "20"}), "500": ("status", 500),
    "503": ("status", 503), "malformed": ("malformed",), "empty": ("empty",), "truncated": ("truncated",),
    "wrong_length": ("wrong_length",), "drop": ("drop",)}


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the listen backlog: 128 clients connecting at once are all accepted


class FaultServer:
    def __init__(self, script: list[Any] | None = None, *, lifetime_s: float = 60.0,
                 default: Any = ("good",), fault_rate: float = 0.0, seed: int = 0, delay_s: float = 0.0) -> None:
        self.fault_rate, self._rng, self.faults = fault_rate, random.Random(seed), Counter()
        self.delay_s = delay_s  # every answer waits this long (an endpoint's latency)
        self.script: deque = deque(script or [])
        self.default = default
        self.requests: list[dict] = []  # bodies of the chat requests received
        self.headers: list[dict] = []  # lower-cased header names
        self._lock = threading.Lock()
        self._stop = threading.Event()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                owner._send(self, 200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:
                owner._handle(self)

        self.httpd = _Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._timer = threading.Timer(lifetime_s, self.stop)
        self._timer.daemon = True

    @property
    def n_calls(self) -> int:
        with self._lock:
            return len(self.requests)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        self._timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: Any, headers: dict | None = None,
              raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        try:
            h.send_response(code)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            for k, v in (headers or {}).items():
                h.send_header(k, str(v))
            h.end_headers()
            h.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout)

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        req = json.loads(h.rfile.read(int(h.headers.get("Content-Length", 0))))
        with self._lock:
            self.requests.append(req)
            self.headers.append({k.lower(): v for k, v in h.headers.items()})
            if self.script:
                action = self.script.popleft()
            elif self.fault_rate and self._rng.random() < self.fault_rate:
                kind = self._rng.choice(sorted(FAULT_KINDS))
                self.faults[kind] += 1
                action = FAULT_KINDS[kind]
            else:
                action = self.default
        action = (action,) if isinstance(action, str) else tuple(action)
        kind = action[0]
        if self.delay_s:
            self._stop.wait(self.delay_s)
        if kind == "status":
            code, headers = action[1], (action[2] if len(action) > 2 else {})
            return self._send(h, code, {"error": {"message": f"injected {code}", "code": code}}, headers)
        if kind == "sleep":
            self._stop.wait(action[1])
        if kind == "malformed":
            return self._send(h, 200, None, raw=b'{"choices": [ this is not json')
        if kind == "empty":
            return self._send(h, 200, {"id": "x", "object": "chat.completion", "choices": []})
        if kind == "drop":
            h.close_connection = True
            return
        if kind == "reject_logprobs" and req.get("logprobs"):
            return self._send(h, action[1], {"error": {"message": "logits_all is off"}})
        text = action[1] if kind == "good" and len(action) > 1 else self._echo(req)
        if kind == "truncated":
            text = text[: len(text) // 2]
        if kind == "wrong_length" and text.startswith("[") and "," in text:
            text = text[: text.rindex(",")] + "]"
        if "prompt" in req:  # /v1/completions
            return self._send(h, 200, {"id": "cmpl-fake", "object": "text_completion", "model": req.get("model"),
                                       "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
                                       "usage": {"prompt_tokens": 10, "completion_tokens": len(text.split())}})
        self._send(h, 200, self._completion(req, text, serve_lp=kind != "no_logprobs"))

    @staticmethod
    def _echo(req: dict) -> str:
        return "echo: " + (req["prompt"] if "prompt" in req else req["messages"][-1]["content"])

    @staticmethod
    def _completion(req: dict, text: str, serve_lp: bool) -> dict:
        tokens = text.split(" ")
        logprobs = None
        if serve_lp and req.get("logprobs"):
            k = req.get("top_logprobs") or 0
            logprobs = {"content": [
                {"token": t, "logprob": -0.1, "bytes": None,
                 "top_logprobs": [{"token": t, "logprob": -0.1}]
                 + [{"token": f"alt{j}", "logprob": -1.0 - j} for j in range(1, k)]}
                for t in tokens]}
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                "model": req.get("model"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "logprobs": logprobs, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": len(tokens),
                          "total_tokens": 10 + len(tokens)}}
