"""Shared fixtures: the embedded model is loaded once per test session."""
from __future__ import annotations

import numpy as np
import pytest

# Every variable through which an LLM endpoint (and its key) is configured. They are cleared for
# every test, so no test can reach a remote API because of the machine's environment; a test that
# needs one sets it itself with monkeypatch.setenv.
LLM_ENV_VARS = (
    "AUTOINTERP_LLM_BASE_URL", "AUTOINTERP_LLM_MODEL", "AUTOINTERP_LLM_API_KEY",
    "AUTOINTERP_LLM_API_KEY_ENV", "AUTOINTERP_LLM_PRICE_PROMPT", "AUTOINTERP_LLM_PRICE_COMPLETION",
    "AUTOINTERP_LLM_LOGPROBS", "AUTOINTERP_LLM_LISTS", "AUTOINTERP_LLM_CONTEXT", "AUTOINTERP_LLM_BATCH",
    "AUTOINTERP_LLM_MAX_CALLS", "AUTOINTERP_LLM_MAX_COST", "AUTOINTERP_LLM_DRY_RUN",
    "OPENAI_BASE_URL", "OPENAI_MODEL", "OPENAI_API_KEY",
)


@pytest.fixture(autouse=True)
def no_llm_endpoint_from_the_environment(monkeypatch):
    for var in LLM_ENV_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def subject():
    from autointerp import models

    return models.load("embedded")


@pytest.fixture(scope="session")
def rows(subject) -> np.ndarray:
    """A few packed rows of the stdlib corpus (BOS first)."""
    from autointerp import corpus

    return corpus.load_and_pack("stdlib", subject.tokenizer, ctx_len=32, n_tokens=32 * 24, seed=0).tokens


def random_topk_sae(d_in: int = 576, d_sae: int = 256, k: int = 8, seed: int = 0,
                    hook: str = "model.layers.4"):
    """An untrained TopK SAE (METHODS' random control SAE): enough to test plumbing, not meaning."""
    from autointerp import saes

    return saes.random_sae(d_in, d_sae, k, seed=seed, hook=hook, model_name="test")


@pytest.fixture()
def topk_sae():
    return random_topk_sae()


class WordTokenizer:
    """A tiny tokenizer for tests: one id per word (with its leading space), the vocabulary grown on
    use. With ``special`` set, id 0 is that special token (dropped by skip_special_tokens)."""

    def __init__(self, special: str | None = None) -> None:
        self.special = special
        self.vocab: list[str] = [special] if special is not None else []
        self.ids: dict[str, int] = {}

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        import re

        out = []
        for piece in re.findall(r"\s*\S+", text):
            if piece not in self.ids:
                self.ids[piece] = len(self.vocab)
                self.vocab.append(piece)
            out.append(self.ids[piece])
        return out

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        skip = skip_special_tokens and self.special is not None
        return "".join(self.vocab[i] for i in ids if not (skip and i == 0))

    def batch_decode(self, seqs) -> list[str]:
        return [self.decode(s) for s in seqs]
