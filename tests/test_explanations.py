"""Answers that are not explanations are failures, each with its cause, and the chapter's advice
follows the cause; the explanations file round-trips."""
from __future__ import annotations

import pytest
from fault_server import FaultServer

from autointerp import explain as xp
from autointerp import explanations as xps
from autointerp.llm import Endpoint, LLMClient
from autointerp.records import LatentExamples, Window

FAST = dict(timeout_s=5, max_tries=1, backoff_base_s=0.01, backoff_max_s=0.05)
VOCAB = {1: " open", 2: " the", 3: " file", 4: " and", 5: " read", 6: " it"}


def dec(ids):
    return [VOCAB.get(i, f" t{i}") for i in ids]


def _lex(lat: int) -> LatentExamples:
    ids = (1, 2, 3, 4, 5, 6, 20 + lat)  # one token differs per latent, so every prompt differs
    acts = (0.0, 0.0, 5.0, 0.0, 0.0, 0.0, 0.0)
    train = tuple(Window(lat, r, 1, ids, acts, 5.0, r % 2, "activating") for r in range(4))
    return LatentExamples(lat, 5.0, 4, train=train)


def _run(script, max_tokens: int = 12, base_url: str | None = None):
    lexs = [_lex(j) for j in range(len(script))]
    with FaultServer(script) as srv:
        client = LLMClient(Endpoint(base_url=base_url or srv.base_url, model="fake"), None,
                           concurrency=1, **FAST)
        return xp.run_explainers(lexs, [xp.LLMExplainer(max_tokens=max_tokens)], dec, client)


def test_non_explanations_fail_with_their_cause():
    out = _run([("good", "[EXPLANATION]: The Expected Output:"),  # a heading (seen on demo)
                ("good", "[EXPLANATION]: Name"),  # one word (seen on demo)
                ("good", "[EXPLANATION]: open the file and read"),  # the excerpt, echoed
                ("good", "[EXPLANATION]: Find what the marked tokens have in common"),  # the instructions
                ("good", "[EXPLANATION]: <your description>"),
                ("good", "I think that these excerpts are all about something quite long and"),  # cut off
                ("good", "It is about files."),  # no marker, not cut off
                ("good", "Worked example 1. Excerpts: Example 1: The ship crossed the Atlantic in"),  # a copy
                # the prompt's frame continued with other words (seen on demo after the first fix)
                ("good", "Worked example 2. Excerpts:\nExample 1: The ship crossed the Atlantic in ten"),
                ("good", "[EXPLANATION]: The word file in instructions about reading")])
    kinds = [x.details.get("failure") for x in out]
    assert kinds == ["placeholder", "too_short", "echo", "echo", "placeholder", "cut_off", "format", "echo", "echo",
                     None]
    assert [x.failed for x in out] == [True] * 9 + [False]
    assert all(x.text is None for x in out[:9]) and out[9].text.startswith("The word file")
    assert "copies the prompt" in out[7].error  # cut off too, but raising max_tokens would not help
    assert "max_tokens=12" in out[5].error


def test_advice_follows_the_cause():
    out = _run([("good", "[EXPLANATION]: Name"), ("good", "words " * 20)], max_tokens=12)
    summ = xps.summary(out)
    text = xps.verdict(Endpoint("http://127.0.0.1:1/v1", "fake"), summ.loc[["llm"]], out)
    assert "raise max_tokens" in text and "too weak" in text and "check the endpoint" not in text
    bad = xps.failed_reply(out)
    assert bad is not None and bad.failed and bad.raw
    with pytest.raises(ConnectionError, match="Cannot reach the LLM endpoint"):  # nothing listens there
        _run([("good",)], base_url="http://127.0.0.1:9/v1")
    down = _run([("drop",)] * 8)  # a server that drops every connection (dies mid-run)
    assert down[0].details["failure"] == "endpoint"
    text = xps.verdict(Endpoint("http://127.0.0.1:9/v1", "fake"), xps.summary(down).loc[["llm"]], down)
    assert "check the endpoint" in text and "max_tokens" not in text and "too weak" not in text


@pytest.mark.parametrize("answer, kind", [("Names of things:", "placeholder"), ("Files", "too_short"),
                                          ("file names", "too_short"), ("n/a", "placeholder")])
def test_check_answer(answer, kind):
    assert xp.check_answer(answer, "some prompt")[0] == kind
    assert xp.check_answer("Names of oceans in travel stories", "prompt about ships") is None
