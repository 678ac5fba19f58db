"""One async client for any OpenAI-compatible chat endpoint, with retries, a response cache and a ledger.

``LLMClient.run(requests)`` sends many ``ChatRequest``s with bounded concurrency and returns one
``ChatResponse`` per request, in order. A request that still fails after all tries comes back with
``error`` set (never an exception). Successful responses are cached on disk by
``ChatRequest.key(model)``, so a rerun makes no new calls. API keys are read from an environment
variable and never stored in requests, responses, cache files or the ledger.
Where requests go is an ``endpoints.Endpoint``; the embedded llama.cpp server is ``server``.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hashlib
import json
import os
import random
import tempfile
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import openai

from . import budget as _budget
from .budget import Budget, Estimate, Spending
from .endpoints import Endpoint, check_reachable
from .ledger import Ledger
from .wire import Fatal as _Fatal
from .wire import Retry as _Retry
from .wire import parse_chat, request_body, retry_after_s as _retry_after_s

ROLES = ("system", "user", "assistant")
MAX_RETRY_AFTER_S = 300.0
_CACHE_VERSION = 1


@dataclass(frozen=True)
class ChatRequest:
    """One chat completion request; hashable, and its ``key`` addresses the response cache."""

    messages: tuple[tuple[str, str], ...]
    max_tokens: int = 256
    temperature: float = 0.0
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int = 0
    tag: str = ""  # label for the ledger; not part of the cache key
    completion: bool = False  # plain text completion (/v1/completions) of the one message's text
    stop: tuple[str, ...] = ()  # stop sequences

    def __post_init__(self) -> None:
        msgs = tuple((str(role), str(content)) for role, content in self.messages)
        bad = [role for role, _ in msgs if role not in ROLES]
        if not msgs or bad:
            raise ValueError(f"ChatRequest needs >= 1 message with roles in {ROLES}; got roles "
                             f"{[r for r, _ in msgs]}")
        if self.completion and len(msgs) != 1:
            raise ValueError(f"A completion request sends one prompt: give exactly one message, got {len(msgs)}.")
        if not 0 <= self.top_logprobs <= 20:
            raise ValueError(f"top_logprobs must be in 0..20 (OpenAI's limit), got {self.top_logprobs}")
        object.__setattr__(self, "messages", msgs)

    def key(self, model: str) -> str:
        """sha256 over the model, the messages and the sampling parameters."""
        payload = {"v": _CACHE_VERSION, "model": model, "messages": [list(m) for m in self.messages],
                   "max_tokens": self.max_tokens, "temperature": float(self.temperature),
                   "logprobs": self.logprobs, "top_logprobs": self.top_logprobs if self.logprobs else 0,
                   "seed": self.seed}
        if self.completion or self.stop:  # absent otherwise, so older cache entries stay valid
            payload.update(completion=self.completion, stop=list(self.stop))
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChatResponse:
    """The answer to one ChatRequest. ``top_logprobs[i]`` holds, for generated token i, the pair
    (token, logprob) of the token itself followed by the served top alternatives (which usually
    include the token again): ``dict(top_logprobs[i])`` maps token -> logprob."""

    key: str
    text: str | None
    top_logprobs: tuple | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    error: str | None = None
    logprobs_fallback: bool = False
    attempts: int = 1  # HTTP tries made for this response in this process (0 when served from cache)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _LoopState:
    client: openai.AsyncOpenAI
    semaphore: asyncio.Semaphore
    inflight: dict[str, asyncio.Future] = field(default_factory=dict)


class LLMClient:
    """Async OpenAI-compatible chat client with bounded concurrency, retries, cache and ledger."""

    def __init__(self, endpoint: Endpoint, cache_dir: Path | None, *, concurrency: int = 4,
                 timeout_s: float = 60, max_tries: int = 5, backoff_base_s: float = 0.5,
                 backoff_max_s: float = 20, budget: Budget | None = None) -> None:
        if concurrency < 1 or max_tries < 1 or timeout_s <= 0:
            raise ValueError("concurrency and max_tries must be >= 1 and timeout_s > 0")
        self.budget = budget if budget is not None else Budget.from_env()
        self.spending = Spending(self.budget, endpoint.price_prompt_per_mtok, endpoint.price_completion_per_mtok)
        self._reachable = False
        self.endpoint = endpoint
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.concurrency, self.timeout_s, self.max_tries = concurrency, timeout_s, max_tries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        self.ledger = Ledger(endpoint.price_prompt_per_mtok, endpoint.price_completion_per_mtok)
        self.logprobs_supported: bool | None = endpoint.supports_logprobs
        key = os.environ.get(endpoint.api_key_env, "").strip()
        if not key:
            if not endpoint.is_local:
                warnings.warn(f"No API key in ${endpoint.api_key_env} for {endpoint.base_url}; "
                              f"requests go out without one. Set {endpoint.api_key_env} if the "
                              "endpoint needs a key.", stacklevel=2)
            key = "sk-local"
        self.__key = key
        self._states: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._rng = random.Random()
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)

    @property
    def _api_key(self) -> str:
        """The key itself, for the batch module's own openai client; never printed or stored."""
        return self.__key

    def __repr__(self) -> str:
        return (f"LLMClient(base_url={self.endpoint.base_url!r}, model={self.endpoint.model!r}, "
                f"cache_dir={str(self.cache_dir) if self.cache_dir else None!r}, {self.ledger!r})")

    # -- cache -------------------------------------------------------------------------------
    def _cache_path(self, key: str) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / key[:2] / f"{key}.json"

    def _cache_get(self, key: str) -> ChatResponse | None:
        path = self._cache_path(key)
        if path is None or not path.is_file():
            return None
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            tl = d["top_logprobs"]
            top = None if tl is None else tuple(tuple((str(t), float(lp)) for t, lp in tok) for tok in tl)
            resp = ChatResponse(key=key, text=d["text"], top_logprobs=top,
                                prompt_tokens=int(d["prompt_tokens"]),
                                completion_tokens=int(d["completion_tokens"]), cached=True,
                                logprobs_fallback=bool(d["logprobs_fallback"]), attempts=0)
        except (OSError, ValueError, KeyError, TypeError):
            return None  # unreadable entry: treat as a miss, it is rewritten after the call
        if resp.logprobs_fallback and self.endpoint.supports_logprobs:
            return None  # this endpoint is declared to serve logprobs: measure again
        return resp

    def _cache_put(self, req: ChatRequest, resp: ChatResponse) -> None:
        path = self._cache_path(resp.key)
        if path is None or resp.error is not None:
            return
        record = {"key": resp.key, "model": self.endpoint.model, "text": resp.text,
                  "top_logprobs": resp.top_logprobs, "prompt_tokens": resp.prompt_tokens,
                  "completion_tokens": resp.completion_tokens,
                  "logprobs_fallback": resp.logprobs_fallback,
                  "request": {"messages": req.messages, "max_tokens": req.max_tokens,
                              "temperature": req.temperature, "logprobs": req.logprobs,
                              "top_logprobs": req.top_logprobs, "seed": req.seed}}
        tmp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f, ensure_ascii=False)
            os.replace(tmp, path)
        except OSError as err:  # a full disk must not lose the answer in hand
            warnings.warn(f"could not write the LLM cache entry {path}: {err}", stacklevel=2)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)

    # -- one request -------------------------------------------------------------------------
    def _state(self) -> _LoopState:
        loop = asyncio.get_running_loop()
        state = self._states.get(loop)
        if state is None:
            client = openai.AsyncOpenAI(base_url=self.endpoint.base_url, api_key=self.__key,
                                        max_retries=0, timeout=self.timeout_s)
            state = self._states[loop] = _LoopState(client, asyncio.Semaphore(self.concurrency))
        return state

    async def aclose(self) -> None:
        """Close the HTTP connections this client opened in the running event loop."""
        state = self._states.pop(asyncio.get_running_loop(), None)
        if state is not None:
            await state.client.close()

    async def achat(self, req: ChatRequest) -> ChatResponse:
        """Send one request (or read it from the cache); never raises for a failed request."""
        key = req.key(self.endpoint.model)
        cached = self._cache_get(key)
        if cached is not None:
            self.ledger.record(req.tag, cached)
            return cached
        if self.budget.dry_run:
            resp = self._failed(key, "dry run: not sent (AUTOINTERP_LLM_DRY_RUN is set)", 0)
            self.ledger.record(req.tag, resp)
            return resp
        state = self._state()
        if key in state.inflight:  # the same request is already on its way: share its answer
            resp = await asyncio.shield(state.inflight[key])
            resp = dataclasses.replace(resp, cached=True, attempts=0)
            self.ledger.record(req.tag, resp)
            return resp
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        state.inflight[key] = fut
        try:
            async with state.semaphore:
                t0 = time.perf_counter()
                resp = await self._call(state.client, req, key)
                latency = time.perf_counter() - t0
        except BaseException:
            fut.cancel()
            raise
        finally:
            state.inflight.pop(key, None)
        fut.set_result(resp)
        self._cache_put(req, resp)
        self.ledger.record(req.tag, resp, latency)
        return resp

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = self._rng.uniform(0, min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, MAX_RETRY_AFTER_S))
        return delay

    async def _call(self, client: openai.AsyncOpenAI, req: ChatRequest, key: str) -> ChatResponse:
        fallback = req.logprobs and self.logprobs_supported is False
        attempts = 0
        while True:
            use_lp = req.logprobs and not fallback
            over = self.spending.refusal(req.messages, req.max_tokens)
            if over:
                return self._failed(key, over, attempts)
            attempts += 1
            self.spending.spend(req.messages, req.max_tokens)
            try:
                text, top, usage = await self._try(client, req, use_lp)
            except _Retry as err:
                if (use_lp and self.logprobs_supported is None and err.status in (400, 422, 500, 501)
                        and attempts < self.max_tries):
                    # the endpoint may reject logprobs (llama.cpp without logits_all answers 500):
                    # resend once without them to find out
                    attempts += 1
                    self.spending.spend(req.messages, req.max_tokens)
                    try:
                        text, top, usage = await self._try(client, req, False)
                    except _Retry:
                        pass
                    else:
                        self.logprobs_supported = False
                        return ChatResponse(key, text, None, *usage, cached=False,
                                            logprobs_fallback=True, attempts=attempts)
                if isinstance(err, _Fatal) or attempts >= self.max_tries:
                    return self._failed(key, f"failed after {attempts} tries: {err}", attempts)
                await asyncio.sleep(self._backoff(attempts, err.retry_after))
                continue
            if use_lp and top:
                self.logprobs_supported = True
            elif use_lp:  # asked for logprobs, none served
                fallback = True
                if self.logprobs_supported is None:
                    self.logprobs_supported = False
            return ChatResponse(key, text, top if use_lp else None, *usage, cached=False,
                                logprobs_fallback=fallback, attempts=attempts)

    committed_usd = property(lambda self: self.spending.committed_usd)  # estimated cost of the tries sent

    def estimate(self, reqs: Sequence[ChatRequest]) -> Estimate:
        """The planned work of ``run(reqs)``: what the cache answers, what is left to send, its tokens
        and (with prices) its cost, before anything is sent."""
        unique = {r.key(self.endpoint.model): r for r in reqs}
        todo = [r for k, r in unique.items() if self._cache_get(k) is None]
        p = sum(_budget.prompt_tokens(r.messages) for r in todo)
        c = sum(r.max_tokens for r in todo)
        # duplicates count as answered by the cache: the client sends each distinct request once
        return Estimate(len(reqs), len(reqs) - len(todo), len(todo), p, c, _budget.cost(p, c, *self.spending.prices))

    def _failed(self, key: str, error: str, attempts: int) -> ChatResponse:
        if len(self.__key) >= 8:
            error = error.replace(self.__key, "***")
        return ChatResponse(key, None, None, 0, 0, cached=False, error=error, attempts=attempts)

    async def _try(self, client: openai.AsyncOpenAI, req: ChatRequest,
                   use_lp: bool) -> tuple[str, tuple | None, tuple[int, int]]:
        """One HTTP call; returns (text, top_logprobs, (prompt_tokens, completion_tokens))."""
        kwargs = request_body(self.endpoint.model, req, use_lp)
        if req.completion:
            return await self._complete(client, kwargs.pop("prompt"), kwargs)
        body = await self._post(lambda: client.chat.completions.with_raw_response.create(**kwargs),
                                f"check base_url {self.endpoint.base_url!r} and model {self.endpoint.model!r}")
        try:
            data = json.loads(body)
        except ValueError:
            raise _Retry(f"malformed response (not a chat completion with choices): {body[:200]!r}")
        return parse_chat(data, use_lp)

    async def _post(self, send, not_found: str) -> str:
        """The body of one HTTP call (``send()``: the openai coroutine), its failures sorted into
        retryable (timeouts, connection errors, 408/409/429/5xx) and fatal ones, with a hint."""
        try:
            raw = await asyncio.wait_for(send(), timeout=self.timeout_s * 1.5)
            return raw.text
        except (openai.APITimeoutError, asyncio.TimeoutError):
            raise _Retry(f"timeout after {self.timeout_s:g} s (raise timeout_s for slow endpoints)")
        except openai.APIConnectionError as err:
            raise _Retry(f"connection error to {self.endpoint.base_url}: {err}")
        except openai.APIStatusError as err:
            code, msg = err.status_code, f"HTTP {err.status_code}: {str(err)[:300]}"
            if code in (408, 409, 429) or code >= 500:
                raise _Retry(msg, code, _retry_after_s(getattr(err.response, "headers", None)))
            if code in (401, 403):
                msg += f" (check the API key in ${self.endpoint.api_key_env})"
            elif code == 404:
                msg += f" ({not_found})"
            raise _Fatal(msg, code)

    async def _complete(self, client: openai.AsyncOpenAI, prompt: str,
                        kwargs: dict[str, Any]) -> tuple[str, None, tuple[int, int]]:
        """One plain completion (no chat template: small and base models continue text best)."""
        body = await self._post(lambda: client.completions.with_raw_response.create(prompt=prompt, **kwargs),
                                "this endpoint may serve no /v1/completions: use the chat explainer")
        try:
            data = json.loads(body)
            text = data["choices"][0]["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retry(f"malformed response (not a text completion with choices): {body[:200]!r}")
        if not isinstance(text, str):
            raise _Fatal("the endpoint returned no text for a completion")
        usage = data.get("usage") or {}
        return text, None, (int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))

    # -- many requests -----------------------------------------------------------------------
    def run(self, reqs: Sequence[ChatRequest], desc: str = "LLM") -> list[ChatResponse]:
        """Send all requests (bounded concurrency, progress bar), answers in the same order.

        Works in scripts and inside a running event loop (Jupyter): there it runs its own loop
        in a worker thread.
        """
        from tqdm.auto import tqdm

        reqs = list(reqs)
        est = self.estimate(reqs)
        if est.to_send:  # before the stage sends anything: what it plans, and any cap
            caps = self.spending.caps()
            print(est.text(desc) + (f"; {caps}" if caps else ""), flush=True)
            if not self.budget.dry_run and not self._reachable:
                check_reachable(self.endpoint)  # one clear error before sending into retries
                self._reachable = True
            if self.endpoint.batch and not self.budget.dry_run:  # one batch job first, into the cache
                from .batch import prefill

                prefill(self, [r for r in reqs if not r.completion], poll_s=self.endpoint.batch_poll_s, desc=desc)

        async def main() -> list[ChatResponse]:
            bar = tqdm(total=len(reqs), desc=desc, disable=not reqs)

            async def one(r: ChatRequest) -> ChatResponse:
                resp = await self.achat(r)
                bar.update(1)
                return resp

            try:
                return list(await asyncio.gather(*(one(r) for r in reqs)))
            finally:
                bar.close()
                await self.aclose()

        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(main())
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="autointerp-llm") as pool:
            return pool.submit(lambda: asyncio.run(main())).result()
