"""A local stand-in for the OpenAI Batch API on 127.0.0.1 (tests only): ``/v1/files`` (upload,
content), ``/v1/batches`` (create, retrieve, list) and live ``/v1/chat/completions``, in OpenAI's
wire format. A job finishes after ``polls`` retrievals; each request is answered by ``answer``
(messages -> text); ``fail_ids`` answer with a per-line error; ``end`` is the final status."""
from __future__ import annotations

import json
import threading
import time
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable


def echo_last(messages: list[dict]) -> str:
    return "1" if "yes" in messages[-1]["content"] else "0"


class BatchServer:
    def __init__(self, *, polls: int = 2, answer: Callable[[list[dict]], str] = echo_last,
                 fail_ids: int = 0, end: str = "completed") -> None:
        self.polls, self.answer, self.fail_ids, self.end = polls, answer, fail_ids, end
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, dict] = {}
        self.calls: dict[str, int] = {"upload": 0, "create": 0, "retrieve": 0, "list": 0, "live": 0}
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer._get(self)

            def do_POST(self) -> None:  # noqa: N802
                outer._post(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def __enter__(self) -> "BatchServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()

    # -- wire -------------------------------------------------------------------------------
    @staticmethod
    def _send(h: BaseHTTPRequestHandler, code: int, payload: Any, raw: bytes | None = None) -> None:
        body = raw if raw is not None else json.dumps(payload).encode()
        h.send_response(code)
        h.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def _completion(self, body: dict) -> dict:
        text = self.answer(body["messages"])
        return {"id": "cmpl", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}}

    def _job(self, bid: str) -> dict:
        b = self.batches[bid]
        out = dict(b["public"])
        if b["polled"] >= self.polls and out["status"] != self.end:
            lines, n_fail = [], 0
            for i, line in enumerate(self.files[out["input_file_id"]].decode().splitlines()):
                item = json.loads(line)
                if n_fail < self.fail_ids:
                    n_fail += 1
                    lines.append({"id": "r", "custom_id": item["custom_id"], "response": None,
                                  "error": {"code": "server_error", "message": "injected"}})
                elif self.end == "completed" or i % 2 == 0:  # an expired job answered half
                    lines.append({"id": "r", "custom_id": item["custom_id"], "error": None,
                                  "response": {"status_code": 200, "request_id": "q", "body": self._completion(item["body"])}})
            fid = f"file-out-{bid}"
            self.files[fid] = "\n".join(json.dumps(x) for x in lines).encode()
            ok = sum(1 for x in lines if x["error"] is None)
            out.update(status=self.end, output_file_id=fid,
                       request_counts={"total": out["request_counts"]["total"], "completed": ok, "failed": n_fail})
            b["public"] = out
        return out

    def _get(self, h: BaseHTTPRequestHandler) -> None:
        path = h.path.split("?")[0]
        with self._lock:
            if path.startswith("/v1/batches/"):
                bid = path.rsplit("/", 1)[1]
                self.calls["retrieve"] += 1
                self.batches[bid]["polled"] += 1
                return self._send(h, 200, self._job(bid))
            if path == "/v1/batches":
                self.calls["list"] += 1
                data = [b["public"] for b in self.batches.values()]
                return self._send(h, 200, {"object": "list", "data": data, "has_more": False})
            if path.startswith("/v1/files/") and path.endswith("/content"):
                return self._send(h, 200, None, raw=self.files[path.split("/")[3]])
        self._send(h, 404, {"error": {"message": f"no route {path}"}})

    def _post(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length)
        path = h.path.split("?")[0]
        with self._lock:
            if path == "/v1/files":
                msg = BytesParser(policy=HTTP).parsebytes(
                    f"Content-Type: {h.headers['Content-Type']}\r\n\r\n".encode() + raw)
                content = next(p.get_payload(decode=True) for p in msg.iter_parts() if p.get_filename())
                self.calls["upload"] += 1
                fid = f"file-in-{len(self.files)}"
                self.files[fid] = content
                return self._send(h, 200, {"id": fid, "object": "file", "bytes": len(content), "created_at": 0,
                                           "filename": "requests.jsonl", "purpose": "batch", "status": "processed"})
            body = json.loads(raw or b"{}")
            if path == "/v1/batches":
                self.calls["create"] += 1
                bid = f"batch_{len(self.batches)}"
                n = len(self.files[body["input_file_id"]].decode().splitlines())
                self.batches[bid] = {"polled": 0, "public": {
                    "id": bid, "object": "batch", "endpoint": body["endpoint"], "input_file_id": body["input_file_id"],
                    "completion_window": body["completion_window"], "status": "in_progress", "created_at": int(time.time()),
                    "output_file_id": None, "error_file_id": None,
                    "request_counts": {"total": n, "completed": 0, "failed": 0}}}
                return self._send(h, 200, self.batches[bid]["public"])
            if path == "/v1/chat/completions":
                self.calls["live"] += 1
                return self._send(h, 200, self._completion(body))
        self._send(h, 404, {"error": {"message": f"no route {path}"}})
