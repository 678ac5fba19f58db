"""Shared fixtures: the embedded model is loaded once per test session."""
from __future__ import annotations

import numpy as np
import pytest


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
