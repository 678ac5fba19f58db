"""The subject model on NDIF: nnsight remote execution (``remote=True`` in the run's settings).

NDIF hosts a set of hub models (``nnsight.status()`` lists them); a trace sent with
``remote=True`` runs there and only the saved values come back, so a laptop can cache a 70B model's
activations. Here the model is an undispatched ``nnsight.TransformersModel`` (its module tree on
the meta device: config and tokenizer from the hub, no weights), and ``models.hooked_output`` sends each trace remotely: caching (chapter 01) and anything
else that reads activations through it. Stages that need the weights locally (training an SAE,
steering, the surprisal scorer's forwards; ``needs_local_weights``) stop with an error that says so.

The API key is read from the environment variable ``NDIF_API_KEY`` only (nnsight reads it there
too); it is never written into run.json, results, error messages or notebooks.
"""
from __future__ import annotations

import os

from .paths import HubUnreachable, hub_reachable

KEY_ENV = "NDIF_API_KEY"
HOST_ENV = "NDIF_HOST"


class RemoteUnavailable(RuntimeError):
    """NDIF cannot run this model now: no key, service unreachable, or the model is not hosted."""


def api_key() -> str:
    """The NDIF key from the environment, or a clear error (the key's value is never printed)."""
    key = os.environ.get(KEY_ENV, "").strip()
    if not key:
        raise RemoteUnavailable(
            f"remote=True needs an NDIF API key in the environment variable {KEY_ENV} (get one at "
            "https://login.ndif.us, then `export NDIF_API_KEY=...` before starting Jupyter). "
            "Settings and run.json never hold the key. Or set remote=False to run the model here.")
    return key


def hosted_models() -> dict[str, str]:
    """repo id -> application state of every model NDIF deploys (``GET {host}/status``)."""
    from nnsight import CONFIG
    from nnsight.ndif import _get

    try:
        status = _get("/status")
    except Exception as err:  # noqa: BLE001 - httpx raises many kinds
        raise RemoteUnavailable(f"Cannot reach NDIF at {CONFIG.API.HOST} ({type(err).__name__}); "
                                "check the network or NDIF_HOST, or set remote=False.") from None
    return {d.get("repo_id", ""): d.get("application_state", "") for d in status.get("deployments", {}).values()}


def check_hosted(repo_id: str) -> None:
    """Raise unless NDIF reports ``repo_id`` RUNNING, naming the models it does run."""
    hosted = hosted_models()
    if hosted.get(repo_id) != "RUNNING":
        running = sorted(r for r, s in hosted.items() if s == "RUNNING")
        why = f"is {hosted[repo_id].lower()}" if repo_id in hosted else "is not hosted"
        raise RemoteUnavailable(f"Model {repo_id!r} {why} on NDIF. Running now: {running or 'none'}. "
                                "Pick one of those, or set remote=False to run the model here.")


def load_remote(spec: str, *, dtype: str = "bfloat16"):
    """A ``SubjectModel`` whose traces run on NDIF: its config and tokenizer come from the hub,
    its weights stay remote (meta tensors here)."""
    from pathlib import Path

    from .config import EMBEDDED_MODEL
    from .models import SubjectModel

    if spec == EMBEDDED_MODEL or Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        raise ValueError(f"remote=True runs a hub model that NDIF hosts (e.g. 'meta-llama/Llama-3.1-8B'); "
                         f"{spec!r} is local: set remote=False to run it here.")
    api_key()
    check_hosted(spec)
    if not hub_reachable():
        raise HubUnreachable(f"remote=True reads {spec!r}'s config and tokenizer from the Hugging Face hub, "
                             "which is unreachable from this machine.")
    import nnsight
    import torch

    # not dispatched: the module tree on the meta device, which is all a remote trace needs here
    from transformers import AutoTokenizer

    lm = nnsight.TransformersModel(spec, task="text-generation", tokenizer=AutoTokenizer.from_pretrained(spec),
                                   dtype=getattr(torch, dtype))
    return SubjectModel(hf=lm._module, tokenizer=lm.tokenizer, name=spec, source=f"ndif:{spec}", _nn=lm, remote=True)


def needs_local_weights(subject, what: str) -> None:
    """Stop a stage that runs the model's weights here when the subject is remote."""
    if getattr(subject, "remote", False):
        raise ValueError(f"{what} needs the model's weights on this machine; with remote=True only traces "
                         "run (on NDIF). Load a pretrained SAE (sae='sae-lens:...' or a folder), or set remote=False.")
