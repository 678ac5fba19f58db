"""Simulation scorer against a rule-following fake judge (tests/fault_server.py)."""
from __future__ import annotations

import ast
import math
import re

import numpy as np
import pytest
from fault_server import FaultServer

from autointerp.llm import Endpoint, LLMClient
from autointerp.records import Window
from autointerp.scorers import run_with_control
from autointerp.scorers.simulation import (SimulationScorer, expected_level, expected_levels,
                                           parse_levels, pearson)

VOCAB = [" the", " cat", " dog", " sat", " on", " a", " mat", " big", " ran", " home", " zzz", " qqq", " owl"]
CAT, DOG, ZZZ, QQQ, OWL = 1, 2, 10, 11, 12
FILLER = [0, 3, 4, 5, 6, 7, 8, 9]
FAST = dict(timeout_s=5, max_tries=2, backoff_base_s=0.01, backoff_max_s=0.05)
EXPL = {0: "Mentions of the word cat", 1: "Mentions of the word dog"}
# the fake judge's served alternatives and the expected levels they give
ALTS0 = [("0", 0.8), ("1", 0.1), ("5", 0.05), ("<", 0.05)]
ALTS10 = [("9", 0.2), ("8", 0.05), ("x", 0.05)]  # plus the sampled "1" (split) or "10", p 0.7
EV0 = (0 * 0.8 + 1 * 0.1 + 5 * 0.05) / 0.95
EV10 = (10 * 0.7 + 9 * 0.2 + 8 * 0.05) / 0.95


def decode(ids):
    return [VOCAB[i] for i in ids]


def make_examples(latent: int, key: int, other: int, n_pos: int = 5, n_neg: int = 5, seed: int = 0,
                  extra_neg: tuple[list[int], ...] = ()) -> list[Window]:
    """Activating windows: `key` at act 5.0, all else 0. Every other negative holds `other`."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_pos):
        ids = [int(t) for t in rng.choice(FILLER, 8)]
        acts = [0.0] * 8
        ids[1 + i % 6], acts[1 + i % 6] = key, 5.0
        out.append(Window(latent, i, 0, tuple(ids), tuple(acts), 5.0, i % 2, "activating"))
    negs = [[int(t) for t in rng.choice(FILLER, 8)] for _ in range(n_neg)]
    for j in range(0, n_neg, 2):
        negs[j][3] = other
    for j, ids in enumerate(negs + list(extra_neg)):
        out.append(Window(latent, 100 + j, 0, tuple(ids), (0.0,) * len(ids), 0.0, None, "random"))
    return out


def latent_examples():
    return {0: make_examples(0, CAT, DOG, seed=0), 1: make_examples(1, DOG, CAT, seed=1)}


class SimJudge(FaultServer):
    """Predicts 10 on tokens equal to the explanation's last word, 0 elsewhere. A ' zzz' token:
    one value too few; ' qqq': 'x' as the first value; ' owl': 11 as the first value.
    Logprobs (tokens '[', digits, ',', ' ', ']'; 10 as '1' + '0', or one '10' token when
    `split10` is False): entries 0 serve ALTS0, entries 10 the sampled token at 0.7 plus ALTS10."""

    split10 = True

    def _tokens(self, req: dict) -> tuple[list[str], str]:
        user = req["messages"][-1]["content"]
        word = re.search(r"Explanation: .* (\w+)\n", user).group(1)
        return [ast.literal_eval(t) for t in re.findall(r"^\d+\. (.*)$", user, re.M)], word

    def _echo(self, req: dict) -> str:
        toks, word = self._tokens(req)
        vals = ["10" if t.strip() == word else "0" for t in toks]
        if " zzz" in toks:
            vals = vals[:-1]
        if " qqq" in toks:
            vals[0] = "x"
        if " owl" in toks:
            vals[0] = "11"
        return "[" + ", ".join(vals) + "]"

    def _completion(self, req: dict, text: str, serve_lp: bool) -> dict:
        out = FaultServer._completion(req, text, serve_lp=False)
        if serve_lp and req.get("logprobs"):
            pattern = r"\d|\[|\]|,|\s|[^\[\],\s\d]+" if self.split10 else r"10|\d|\[|\]|,|\s|[^\[\],\s\d]+"
            content, prev = [], ""
            for tok in re.findall(pattern, text):
                if tok.isdigit() and not prev.isdigit():
                    alts = ALTS0 if tok == "0" else [(tok, 0.7), *ALTS10]
                    top = [{"token": t, "logprob": math.log(p)} for t, p in alts]
                    content.append({"token": tok, "logprob": math.log(dict(alts)[tok]), "top_logprobs": top})
                else:
                    content.append({"token": tok, "logprob": -0.01, "top_logprobs": []})
                prev = tok
            out["choices"][0]["logprobs"] = {"content": content}
        return out


class OneTokenTen(SimJudge):
    split10 = False


def client_for(srv: FaultServer) -> LLMClient:
    return LLMClient(Endpoint(base_url=srv.base_url, model="fake-judge"), None, **FAST)


def test_parse_levels_is_strict():
    assert parse_levels("[0, 10, 3]", 3) == ([0, 10, 3], None)
    assert parse_levels("Sure [1] then: [0,\n 7]", 2) == ([0, 7], None)
    for bad, n, why in [("[0, 1]", 3, "2 values for 3"), ("no list", 2, "no [..] list"),
                        ("[0, x]", 2, "not an integer"), ("[0, 11]", 2, "outside 0..10"),
                        ("[0, -1]", 2, "not an integer"), ("[1.5, 0]", 2, "not an integer"),
                        ("[]", 1, "not an integer")]:
        got, reason = parse_levels(bad, n)
        assert got is None and why in reason, (bad, reason)


def test_perfect_rule_correlation_and_auroc_one_run():
    exs = latent_examples()
    with SimJudge() as srv:
        scorer = SimulationScorer(client_for(srv), decode=decode)
        res = scorer.score(EXPL, exs)
    assert srv.n_calls == 20  # every example of both latents, one request each
    for r in res:
        m = r.metrics
        assert r.scorer == "simulation" and m.correlation == pytest.approx(1.0)
        assert m.auroc == 1.0 and m.n_failed == 0 and math.isnan(m.balanced_accuracy)
        assert all(e.prediction is None for e in r.examples)
        assert {e.score for e in r.examples if e.label} == {10.0}
        assert r.usage["prompt_hash"] == scorer.prompt_hash and r.usage["n_prompts"] == 10
        assert r.usage["predicted"]["0:0"] == [10 if t == (CAT if r.latent == 0 else DOG) else 0
                                                for t in exs[r.latent][0].token_ids]
    text = scorer.render_prompt(EXPL[0], exs[0], 1)
    assert text.startswith("=== system ===") and "\n1. " in text and "list of 8 integers" in text
    assert any(q["messages"][1]["content"] in text for q in srv.requests)
    assert re.search(r"^\d\. ' (the|cat|sat|on|a|mat|big|ran|home)'$", text, re.M)


def test_shuffled_explanations_score_lower():
    with SimJudge() as srv:
        run = run_with_control(SimulationScorer(client_for(srv), decode=decode),
                               EXPL, latent_examples())
    real, control = run.real, run.control
    for r, c in zip(real, control):
        assert c.control == "shuffled" and c.explanation != r.explanation
        assert c.metrics.correlation < 0 < r.metrics.correlation == pytest.approx(1.0)
        assert c.metrics.auroc < 0.5 < r.metrics.auroc


def test_malformed_replies_fail_with_reasons():
    extra = ([0, 3, ZZZ, 4, 5, 6, 7, 8], [0, QQQ, 3, 4, 5, 6, 7, 8], [OWL, 3, 4, 5, 6, 7, 8, 0])
    exs = {0: make_examples(0, CAT, DOG, extra_neg=extra)}
    with SimJudge() as srv:
        [r] = SimulationScorer(client_for(srv), decode=decode).score({0: EXPL[0]}, exs)
    reasons = {f["example_id"]: f["reason"] for f in r.usage["failures"]}
    assert set(reasons) == {"105:0", "106:0", "107:0"}
    assert "7 values for 8 tokens" in reasons["105:0"]
    assert "not an integer" in reasons["106:0"] and "outside 0..10" in reasons["107:0"]
    assert [e.example_id for e in r.examples if e.score is None] == ["105:0", "106:0", "107:0"]
    assert r.metrics.n_failed == 3 and r.usage["failed_prompts"] == 3
    assert r.metrics.correlation == pytest.approx(1.0) and r.metrics.auroc == 1.0
    assert set(r.usage["predicted"]) == {e.example_id for e in r.examples} - set(reasons)


@pytest.mark.parametrize("judge", [SimJudge, OneTokenTen])
def test_expected_levels_from_logprobs(judge):
    exs = {0: make_examples(0, CAT, DOG)}
    with judge() as srv:
        [r] = SimulationScorer(client_for(srv), decode=decode, logprobs=True).score({0: EXPL[0]}, exs)
    assert srv.requests[0]["logprobs"] is True and r.usage["used_expected"]
    assert "expected_unavailable" not in r.usage
    for e, x in zip(r.examples, exs[0]):
        want = [EV10 if t == CAT else EV0 for t in x.token_ids]
        assert np.allclose(r.usage["expected"][e.example_id], want, atol=1e-3)
        assert e.score == pytest.approx(max(want))
    assert r.metrics.correlation == pytest.approx(1.0) and r.metrics.auroc == 1.0


def test_expected_level_rules():
    lp = [(t, math.log(p)) for t, p in [("1", 0.5), (" 1", 0.2), ("2", 0.2), ("]", 0.1)]]
    assert expected_level(lp, 1) == pytest.approx((0.5 + 0.2 + 0.4) / 0.9)
    assert expected_level(lp, 10) == pytest.approx((5 + 2 + 0.4) / 0.9)  # "1" + "0": "1" is 10
    assert expected_level(lp, 7) is None  # the sampled token does not begin 7
    top = [(("[", -0.1),), (("0", -0.1), ("3", -2.0)), ((", ", -0.1),), (("4", -0.1),), (("]", -0.1),)]
    ev, why = expected_levels(top, "[0, 4]", [0, 4])
    assert why is None and ev == pytest.approx([3 * math.exp(-2) / (math.exp(-0.1) + math.exp(-2)), 4])
    assert expected_levels(top, "[0, 4] ", [0, 4])[0] is None  # tokens do not spell the reply
    assert math.isnan(pearson([1, 1, 1], [0, 1, 2])) and math.isnan(pearson([1], [2]))


def test_logprobs_fallback_uses_parsed_integers():
    with SimJudge(default=("no_logprobs",)) as srv:
        [r] = SimulationScorer(client_for(srv), decode=decode, logprobs=True).score(
            {0: EXPL[0]}, {0: make_examples(0, CAT, DOG)})
    assert "logprobs_fallback" in r.usage["expected_unavailable"] and not r.usage["used_expected"]
    assert {e.score for e in r.examples} == {0.0, 10.0} and r.metrics.correlation == pytest.approx(1.0)


def test_correlation_nan_and_refusals():
    exs = make_examples(0, CAT, DOG, n_pos=1, n_neg=2)
    with SimJudge(script=[("good", "[0]"), ("good", "[0]")]) as srv:  # 2 of 3 fail
        [r] = SimulationScorer(client_for(srv), decode=decode).score({0: EXPL[0]}, {0: exs})
    assert r.metrics.n_failed == 2 and math.isnan(r.metrics.correlation)
    texts = [{"latent": 0, "text": "a cat", "label": True}, (0, 1, "a mat", False)]  # not Windows
    with pytest.raises(TypeError, match="must be records.Window"):
        SimulationScorer(None, decode=decode).score({0: EXPL[0]}, {0: texts})
    with pytest.raises(ValueError, match="latent_max has no entry for latent 0"):
        SimulationScorer(None, decode=decode, latent_max={1: 3.0}).score({0: EXPL[0]}, {0: exs})
    with pytest.raises(ValueError, match="decode="):
        SimulationScorer(None).score({0: EXPL[0]}, {0: exs})


def test_latent_max_sets_the_true_scale():
    exs = make_examples(0, CAT, DOG)
    items = SimulationScorer(None, decode=decode, latent_max={0: 10.0}).items(0, exs)
    assert max(items[0].true_levels) == 5 and min(items[0].true_levels) == 0
    neg = Window(0, 9, 0, (0, 3), (-2.0, 1.0), 1.0, 0, "activating")
    assert SimulationScorer(None, decode=decode).items(0, [neg])[0].true_levels == (0, 10)
