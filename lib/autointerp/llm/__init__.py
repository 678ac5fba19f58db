"""The LLM layer: ``endpoints`` (where requests go: explicit -> environment -> embedded server),
``client`` (one async OpenAI-compatible client with retries and a response cache), ``ledger``
(what a client did and cost) and ``server`` (the embedded SmolLM2 behind a local llama.cpp server)."""
from .client import ChatRequest, ChatResponse, LLMClient
from .ledger import Ledger
from .endpoints import Endpoint, connect, endpoint_from_env, explicit_endpoint, open_endpoint, safe_url
from .server import LocalServer, local_server, running_servers, stop_all

__all__ = ["ChatRequest", "ChatResponse", "Ledger", "LLMClient", "Endpoint", "connect",
           "endpoint_from_env", "explicit_endpoint", "open_endpoint", "safe_url", "LocalServer",
           "local_server", "running_servers", "stop_all"]
