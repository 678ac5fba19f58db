"""Detection and fuzzing scorers against a rule-following fake judge (tests/fault_server.py)."""
from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest
from conftest import WordTokenizer
from fault_server import FaultServer

from autointerp.examples import TokenDecoder
from autointerp.llm import Endpoint, LLMClient
from autointerp.metrics import auroc
from autointerp.records import Window
from autointerp.scorers import run_with_control
from autointerp.scorers.detection import DetectionScorer, list_probabilities, parse_verdicts
from autointerp.scorers.fuzzing import FuzzingScorer

VOCAB = [" the", " cat", " dog", " sat", " on", " a", " mat", " big", " ran", " home", " zzz", " qqq", " owl"]
CAT, DOG, ZZZ, QQQ, OWL = 1, 2, 10, 11, 12
FILLER = [0, 3, 4, 5, 6, 7, 8, 9]
FAST = dict(timeout_s=5, max_tries=2, backoff_base_s=0.01, backoff_max_s=0.05)


def decode(ids):
    return [VOCAB[i] for i in ids]


def make_examples(latent: int, key: int, n_pos: int = 6, n_neg: int = 6, seed: int = 0,
                  extra_neg: tuple[list[int], ...] = ()) -> list[Window]:
    """Activating windows hold `key` (strong) next to a weak token (below the 0.3 threshold)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n_pos):
        ids = [int(t) for t in rng.choice(FILLER, 8)]
        acts = [0.0] * 8
        p = 2 + i % 5
        ids[p], acts[p], acts[p - 1] = key, 4.0 + i, 0.5
        out.append(Window(latent, i, 0, tuple(ids), tuple(acts), max(acts), i % 2, "activating"))
    negs = [[int(t) for t in rng.choice(FILLER, 8)] for _ in range(n_neg)] + list(extra_neg)
    for j, ids in enumerate(negs):
        out.append(Window(latent, 100 + j, 0, tuple(ids), (0.0,) * 8, 0.0, None, "random"))
    return out


class Judge(FaultServer):
    """Answers by rule: 1 iff the example holds the explanation's last word (fuzzing: iff every
    marked span is that word). ' zzz' in a prompt: one answer too few; ' qqq': garbage.
    With logprobs: P('1') = 0.3 without the word, 0.7 with it (0.2 if the example also says ' owl'),
    and the probabilities of '1' and '0' sum to 0.9 (the rest on other tokens)."""

    def _verdicts(self, req: dict) -> list[tuple[int, float]]:
        user = req["messages"][-1]["content"]
        word = re.search(r"Explanation: .* (\w+)\n", user).group(1)
        out = []
        for ex in re.findall(r"^Example \d+: (.*)$", user, re.M):
            spans = re.findall(r"<<(.*?)>>", ex)
            hit = all(s.strip() == word for s in spans) if spans else f" {word}" in ex
            out.append((int(hit), (0.2 if " owl" in ex else 0.7) if hit else 0.3))
        return out

    def _echo(self, req: dict) -> str:
        user = req["messages"][-1]["content"]
        v = [str(h) for h, _ in self._verdicts(req)]
        if " zzz" in user:
            v = v[:-1]
        if " qqq" in user:
            return "I am not sure."
        return v[0] if len(v) == 1 else "[" + ", ".join(v) + "]"

    def _completion(self, req: dict, text: str, serve_lp: bool) -> dict:
        out = FaultServer._completion(req, text, serve_lp=False)
        if serve_lp and req.get("logprobs"):
            content, verdicts = [], iter(self._verdicts(req))
            for tok in re.findall(r"\[|\]|,|\s|\d|[^\[\],\s\d]+", text):
                if tok in ("0", "1"):
                    _, p1 = next(verdicts)
                    alts = [("1", 0.9 * p1), ("0", 0.9 * (1 - p1)), ("<", 0.1)]
                    top = [{"token": t, "logprob": math.log(p)} for t, p in alts]
                    content.append({"token": tok, "logprob": math.log(dict(alts)[tok]), "top_logprobs": top})
                else:
                    content.append({"token": tok, "logprob": -0.01, "top_logprobs": []})
            out["choices"][0]["logprobs"] = {"content": content}
        return out


def client_for(srv: FaultServer) -> LLMClient:
    return LLMClient(Endpoint(base_url=srv.base_url, model="fake-judge"), None, **FAST)


EXPL = {0: "Mentions of the word cat", 1: "Mentions of the word dog"}


def latent_examples():
    return {0: make_examples(0, CAT, seed=0), 1: make_examples(1, DOG, seed=1)}


def test_parse_verdicts_is_strict():
    assert parse_verdicts("[1, 0, 1]", 3) == ([1, 0, 1], None)
    assert parse_verdicts("Sure: [0,1]", 2) == ([0, 1], None)
    assert parse_verdicts("1", 1) == parse_verdicts("1\n\nBecause ...", 1) == ([1], None)
    assert parse_verdicts("1 or 0", 1)[0] is None
    for bad, n, why in [("[1, 0]", 3, "2 answers for 3"), ("yes", 2, "not a [..] list of 2 answers"),
                        ("[1, maybe]", 2, "other than 0/1"), ("[]", 1, "other than 0/1"),
                        ("yes", 1, "not the single digit 0 or 1 asked for")]:  # the message fits the question
        got, reason = parse_verdicts(bad, n)
        assert got is None and why in reason


def test_detection_correct_judge_gives_perfect_binary_metrics():
    exs = latent_examples()
    with Judge() as srv:
        scorer = DetectionScorer(client_for(srv), decode=decode)
        res = scorer.score(EXPL, exs)
    assert srv.n_calls == 2 * math.ceil(12 / 5)  # all prompts of both latents, one run
    for r in res:
        m = r.metrics
        assert (m.balanced_accuracy, m.precision, m.recall, m.f1) == (1.0, 1.0, 1.0, 1.0)
        assert m.n_pos == 6 and m.n_neg == 6 and m.n_failed == 0 and math.isnan(m.auroc)
        assert {q.quantile: q.recall for q in m.by_quantile} == {0: 1.0, 1: 1.0}
        assert r.usage["prompt_hash"] == scorer.prompt_hash and r.usage["n_prompts"] == 3
        assert r.usage["prompt_tokens"] == 30 and not r.usage["failures"]
        assert all("<<" not in e.text for e in r.examples)
    labels = [e.label for e in res[0].examples]
    assert labels != sorted(labels, reverse=True)  # shuffled, not activating-first
    text = scorer.render_prompt(EXPL[0], exs[0], 2)  # last prompt: 2 examples
    assert text.startswith("=== system ===") and "list of 2 numbers" in text
    assert any(q["messages"][1]["content"] in text for q in srv.requests)


def test_windows_show_as_decoded_text_in_detection_and_non_windows_are_refused():
    tok = WordTokenizer(special="<|endoftext|>")
    exs = []
    for i, (t, lab) in enumerate([("a cat sat", True), ("the mat", False), ("big cat", True)]):
        ids = (0, *tok.encode(t))  # a special token first: dropped from the shown text
        acts = tuple(1.0 if lab and tok.vocab[k] == " cat" else 0.0 for k in ids)
        exs.append(Window(0, i, 0, ids, acts, max(acts), 0 if lab else None,
                          "activating" if lab else "random"))
    with Judge() as srv:
        scorer = DetectionScorer(client_for(srv), decode=TokenDecoder(tok), n_per_prompt=2)
        [r] = scorer.score({0: EXPL[0]}, {0: exs})
        assert r.metrics.balanced_accuracy == 1.0
        assert {e.example_id: e.text for e in r.examples} == {"0:0": "a cat sat", "1:0": "the mat",
                                                               "2:0": "big cat"}
        not_windows = [{"latent": 0, "text": e.text, "label": e.label} for e in r.examples]
        with pytest.raises(TypeError, match="must be records.Window"):
            FuzzingScorer(client_for(srv), decode=TokenDecoder(tok)).score({0: EXPL[0]}, {0: not_windows})
        with pytest.raises(TypeError, match="must be records.Window"):
            DetectionScorer(client_for(srv), decode=TokenDecoder(tok)).score(
                {0: EXPL[0]}, {0: [tuple(w) for w in not_windows]})


def test_wrong_length_and_garbage_answers_fail_their_examples_only():
    exs = {0: make_examples(0, CAT, n_neg=5, extra_neg=([0, 3, ZZZ, 4, 5, 6, 7, 8], [0, QQQ, 3, 4, 5, 6, 7, 8]))}
    with Judge() as srv:
        scorer = DetectionScorer(client_for(srv), decode=decode)
        [r] = scorer.score({0: EXPL[0]}, exs)
    prompts = scorer.prompts(0, EXPL[0], exs[0])
    bad = {s.example_id for p in prompts if any(w in s.text for s in p.shown for w in (" zzz", " qqq"))
           for s in p.shown}
    failed = {e.example_id for e in r.examples if e.prediction is None}
    assert failed == bad and len(bad) >= 2
    reasons = {f["example_id"]: f["reason"] for f in r.usage["failures"]}
    assert set(reasons) == bad
    assert any("answers for" in v for v in reasons.values())
    assert any("not a [..] list" in v for v in reasons.values())
    assert r.metrics.n_failed == len(bad) and r.metrics.balanced_accuracy == 1.0
    assert r.usage["failed_prompts"] == len({id(p) for p in prompts if bad & {s.example_id for s in p.shown}})


@pytest.mark.parametrize("n", [1, 5])
def test_logprob_scores_and_auroc(n):
    exs = make_examples(0, CAT, seed=3)
    exs[0] = dataclasses.replace(exs[0], token_ids=(OWL,) + exs[0].token_ids[1:])
    exs = {0: exs}
    with Judge() as srv:
        scorer = DetectionScorer(client_for(srv), decode=decode, n_per_prompt=n, logprobs=True)
        [r] = scorer.score({0: EXPL[0]}, exs)
    assert srv.requests[0]["logprobs"] is True and srv.n_calls == math.ceil(12 / n)
    expected = [((0.2 if " owl" in e.text else 0.7) if " cat" in e.text else 0.3) for e in r.examples]
    assert np.allclose([e.score for e in r.examples], expected)
    assert r.metrics.auroc == pytest.approx(auroc(expected, [e.label for e in r.examples]))
    assert 0.5 < r.metrics.auroc < 1.0  # the ' owl' activating example ranks below the negatives
    assert r.metrics.balanced_accuracy == 1.0 and "auroc_unavailable" not in r.usage


class HedgingJudge(Judge):
    """Like Judge, but a one-digit answer about an ' owl' excerpt comes back as "1 maybe": it
    does not parse, though its first token still carries logprobs for '0' and '1'."""

    def _echo(self, req: dict) -> str:
        text = super()._echo(req)
        return f"{text} maybe" if text in ("0", "1") and " owl" in req["messages"][-1]["content"] else text


def test_an_unparsed_answer_contributes_no_score():
    exs = make_examples(0, CAT, seed=3)
    exs[0] = dataclasses.replace(exs[0], token_ids=(OWL,) + exs[0].token_ids[1:])
    with HedgingJudge() as srv:
        [r] = DetectionScorer(client_for(srv), decode=decode, n_per_prompt=1, logprobs=True).score(
            {0: EXPL[0]}, {0: exs})
    hedged = [e for e in r.examples if " owl" in e.text]
    assert len(hedged) == 1 and hedged[0].prediction is None and hedged[0].score is None
    others = [e for e in r.examples if " owl" not in e.text]
    assert all(e.score is not None and e.prediction is not None for e in others)
    assert r.metrics.auroc == pytest.approx(auroc([e.score for e in others], [e.label for e in others]))
    assert "not the single digit 0 or 1" in r.usage["failures"][0]["reason"]
    assert r.usage["score_failures"][0]["reason"] == "the answer could not be parsed"


def test_logprobs_fallback_records_auroc_unavailable():
    with Judge(default=("no_logprobs",)) as srv:
        [r] = DetectionScorer(client_for(srv), decode=decode, logprobs=True).score(
            {0: EXPL[0]}, {0: make_examples(0, CAT)})
    assert all(e.score is None for e in r.examples) and math.isnan(r.metrics.auroc)
    assert "logprobs_fallback" in r.usage["auroc_unavailable"]
    assert r.metrics.balanced_accuracy == 1.0  # text answers still count


def test_list_probabilities_rejects_misaligned_tokens():
    top = [(("[", -0.1),), (("1", -0.2), ("0", -2.0)), (("]", -0.1),)]
    probs, why = list_probabilities(top, [1])
    assert why is None and probs[0] == pytest.approx(math.exp(-0.2) / (math.exp(-0.2) + math.exp(-2.0)))
    assert list_probabilities(top, [0])[0] is None and list_probabilities(top, [1, 0])[0] is None


def test_fuzzing_highlights():
    exs = make_examples(0, CAT)
    pos = [e for e in exs if e.kind == "activating"]
    default = FuzzingScorer(None, decode=decode, seed=1)
    shown = {s.example_id: s for p in default.prompts(0, EXPL[0], exs) for s in p.shown}
    for e in pos:  # exactly the true active token (the weak neighbour is below 0.3 x max)
        s = shown[f"{e.row}:{e.start}"]
        assert s.label and s.marked == (e.token_ids.index(CAT),) and "<<cat>>" in s.text
    negs = [s for s in shown.values() if not s.label]
    assert len(negs) == 6 and all(len(s.marked) == 1 and s.text.count("<<") == 1 for s in negs)
    again = {s.example_id: s.marked for p in default.prompts(0, EXPL[0], exs) for s in p.shown}
    assert again == {k: s.marked for k, s in shown.items()}  # seeded
    active = FuzzingScorer(None, decode=decode, mode="active")
    shown = [s for p in active.prompts(0, EXPL[0], exs) for s in p.shown]
    wrong = [s for s in shown if not s.label]
    assert len(shown) == 12 and len(wrong) == 6 and all(s.example_id.endswith(":wrong") for s in wrong)
    for s in wrong:  # same count of marks, never on the true active token
        e = next(x for x in pos if f"{x.row}:{x.start}:wrong" == s.example_id)
        assert len(s.marked) == 1 and s.marked[0] != e.token_ids.index(CAT) and s.quantile is None
    with pytest.raises(ValueError, match="mode="):
        FuzzingScorer(None, mode="nope")


@pytest.mark.parametrize("mode", ["default", "active"])
def test_fuzzing_correct_judge_and_shuffled_control(mode):
    with Judge() as srv:
        scorer = FuzzingScorer(client_for(srv), decode=decode, mode=mode)
        run = run_with_control(scorer, EXPL, latent_examples())
    real, control = run.real, run.control
    for r in real:
        assert r.scorer == "fuzzing" and r.metrics.balanced_accuracy == 1.0 and r.control is None
    for c in control:  # cat examples judged against "dog": nothing fits
        assert c.control == "shuffled" and c.explanation != EXPL[c.latent]
        assert c.metrics.balanced_accuracy == 0.5 and c.metrics.recall == 0.0


def test_every_prompt_failing_counts_every_example_as_failed():
    with Judge(default=("good", "no idea")) as srv:
        [r] = FuzzingScorer(client_for(srv), decode=decode).score({0: EXPL[0]}, {0: make_examples(0, CAT)})
    assert all(e.prediction is None for e in r.examples) and len(r.usage["failures"]) == 12
    assert r.metrics.n_failed == 12 and math.isnan(r.metrics.balanced_accuracy)
    assert r.usage["failed_prompts"] == 3


@pytest.mark.slow
def test_local_server_mechanics():
    """The embedded judge (SmolLM2-135M): mechanics only, its verdicts are not asserted."""
    from autointerp.llm import local_server

    exs = {0: make_examples(0, CAT, n_pos=2, n_neg=2), 1: make_examples(1, DOG, n_pos=2, n_neg=2)}
    with local_server(n_ctx=1024) as ep:
        client = LLMClient(ep, None, timeout_s=60)
        det = DetectionScorer(client, decode=decode, n_per_prompt=1, logprobs=True).score(EXPL, exs)
        fuzz = FuzzingScorer(client, decode=decode, n_per_prompt=4).score(EXPL, exs)
    for r in det:
        assert r.usage["n_prompts"] == 4 and r.usage["prompt_tokens"] > 0
        assert "auroc_unavailable" not in r.usage
        unread = {f["example_id"] for f in r.usage["score_failures"]}
        for e in r.examples:
            assert (e.score is not None and 0.0 <= e.score <= 1.0) or e.example_id in unread
    for r in fuzz:
        failed = {f["example_id"] for f in r.usage["failures"]}
        assert r.usage["n_prompts"] == 1 and r.metrics.n_failed == len(failed)
        assert all((e.prediction in (0, 1)) != (e.example_id in failed) for e in r.examples)
