"""LLM throughput against an endpoint with realistic latency: calls/s at 1, 8, 32, 128 requests in flight.

The endpoint is the test suite's OpenAI-compatible server on 127.0.0.1 (tests/fault_server.py),
answering every chat request after ``--latency`` seconds, as a hosted model or a busy vLLM server
does. Each level sends ``--per-level`` x concurrency distinct requests (no cache) through
``LLMClient.run``, the path every scorer and explainer uses. Ratios are calls/s against one request
in flight, measured side by side in this run. The ceiling is this machine's CPU: the client and the
server share its cores here.

    python bench/llm_throughput.py [--latency 0.2] [--levels 1 8 32 128] [--per-level 4]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from fault_server import FaultServer  # noqa: E402

from autointerp.llm import ChatRequest, Endpoint, LLMClient  # noqa: E402


def measure(base_url: str, concurrency: int, n_calls: int) -> float:
    """Calls per second for ``n_calls`` distinct requests with ``concurrency`` in flight."""
    client = LLMClient(Endpoint(base_url=base_url, model="bench"), None, concurrency=concurrency, timeout_s=60)
    reqs = [ChatRequest((("user", f"request {i} at concurrency {concurrency}"),), 4, 0.0) for i in range(n_calls)]
    t0 = time.perf_counter()
    out = client.run(reqs, desc=f"{concurrency} in flight")
    seconds = time.perf_counter() - t0
    failed = [r.error for r in out if r.error]
    if failed:
        raise RuntimeError(f"{len(failed)} of {n_calls} calls failed at concurrency {concurrency}: {failed[0]}")
    return n_calls / seconds


def run(latency_s: float = 0.2, levels: tuple[int, ...] = (1, 8, 32, 128), per_level: int = 4) -> dict[int, float]:
    """calls/s per concurrency level, against one server answering after ``latency_s``."""
    with FaultServer(default=("good", "0"), delay_s=latency_s, lifetime_s=3600) as srv:
        return {c: measure(srv.base_url, c, max(per_level * c, 8)) for c in levels}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the server waits before each answer")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 32, 128])
    ap.add_argument("--per-level", type=int, default=4, help="calls per level = this x its concurrency (at least 8)")
    args = ap.parse_args(argv)
    rates = run(args.latency, tuple(args.levels), args.per_level)
    base = rates[min(rates)]
    print(f"\nEndpoint latency {args.latency:.2f} s per call (ideal: concurrency / latency calls/s)")
    print(f"{'in flight':>10} {'calls/s':>9} {'ideal':>7} {'x one':>7}")
    for c, r in rates.items():
        print(f"{c:>10} {r:>9.1f} {c / args.latency:>7.0f} {r / base:>7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
