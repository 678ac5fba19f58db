"""The LLM layer: ``endpoints`` (where requests go: explicit -> environment -> embedded server),
``client`` (one async OpenAI-compatible client with retries and a response cache), ``batch`` (the
OpenAI Batch API in front of it: submit, poll, resume), ``wire`` (the request body and response parse both share), ``ledger``
(what a client did and cost), ``budget`` (the estimate before a stage and its spending cap) and ``server`` (the embedded SmolLM2 behind a local llama.cpp server)."""
from .budget import Budget, Estimate
from .client import ChatRequest, ChatResponse, LLMClient
from .ledger import Ledger
from .endpoints import Endpoint, connect, endpoint_from_env, explicit_endpoint, open_endpoint, safe_url
from .server import LocalServer, local_server, running_servers, stop_all

__all__ = ["Budget", "Estimate", "ChatRequest", "ChatResponse", "Ledger", "LLMClient", "Endpoint", "connect",
           "endpoint_from_env", "explicit_endpoint", "open_endpoint", "safe_url", "LocalServer",
           "local_server", "running_servers", "stop_all"]
