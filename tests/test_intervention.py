"""Intervention scorer: exactness at strength 0, KL calibration, random-SAE control, determinism,
and recovery of a planted output direction."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from conftest import random_topk_sae

from autointerp import cache, metrics, saes
from autointerp.scorers import intervention as iv

HOOK = "model.layers.8"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Many tiny forwards: on a shared 2-core machine, 2 OpenMP threads spin-wait and run up to
    ~30x slower than 1 thread (measured), so this module runs single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _prompts(rows: np.ndarray, n: int = 4, length: int = 20) -> list[np.ndarray]:
    """Fixed-length prompts (BOS first) cut from the session rows."""
    return [np.asarray(rows[i, :length - 2 * i], dtype=np.int64) for i in range(n)]


@pytest.fixture(scope="module")
def rnd_sae():
    return saes.random_sae(576, 512, 16, seed=1, hook=HOOK)


def test_strength_zero_is_exact(subject, rows, rnd_sae):
    # A random SAE reconstructs badly, so any leak of dec(enc(h)) instead of h would show.
    batch = iv.PromptBatch(subject, _prompts(rows))
    zero = batch.logprobs(rnd_sae, HOOK, 3, 0.0)
    assert torch.equal(zero, batch.clean)
    assert batch.mean_kl(batch.logprobs(rnd_sae, HOOK, 3, 20.0)) > 1e-4  # the hook does act
    clean = iv.generate(batch, 4, seed=5)
    steered0 = iv.generate(batch, 4, seed=5, sae=rnd_sae, hook=HOOK, latent=3, strength=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(clean, steered0))
    # The prefix cache matches an uncached forward of the whole prompt.
    p = _prompts(rows)[0]
    with torch.inference_mode():
        full = torch.log_softmax(subject.hf(torch.from_numpy(p)[None]).logits[0, -1].float(), -1)
    assert torch.allclose(iv.PromptBatch(subject, [p]).clean[0], full, atol=1e-4)


def _unbatched_mean_kl(subject, prompts, sae, latent: int, strength: float) -> float:
    """Reference for PromptBatch.mean_kl(logprobs(...)): each prompt alone (no padding, no prefix
    cache), a full forward clean and one with the intervention at its last position."""
    kls = []
    for p in prompts:
        ids = torch.from_numpy(np.asarray(p, dtype=np.int64))[None]
        with torch.inference_mode():
            clean = torch.log_softmax(subject.hf(ids).logits[0, -1].double(), -1)
            with iv.intervene(subject, sae, HOOK, latent, strength):
                steered = torch.log_softmax(subject.hf(ids).logits[0, -1].double(), -1)
        kls.append(float((clean.exp() * (clean - steered)).sum()))
    return float(np.mean(kls))


def test_calibration_hits_target_and_kl_grows(subject, rows, rnd_sae):
    sae, prompts, j = rnd_sae, _prompts(rows), 3
    batch = iv.PromptBatch(subject, prompts)
    err = lambda c, target: abs(np.log(c.achieved_kl / target))  # noqa: E731
    cals = {}
    for target in (0.5, 3.0):
        cal = cals[target] = iv.calibrate(batch, sae, HOOK, j, target_kl=target)
        # The chosen strength, re-measured without the batch (its padding and KV cache): the KL
        # it reports is the KL it has, and that is within calibrate's rtol (5%) of the target.
        measured = _unbatched_mean_kl(subject, prompts, sae, j, cal.strength)
        assert measured == pytest.approx(cal.achieved_kl, rel=1e-3), (measured, cal)
        assert cal.converged and abs(measured / target - 1) <= 0.05, (measured, cal)
        assert (cal.strength, cal.achieved_kl) in cal.steps
    # More steps never give a worse |log KL/target|: a search cut at k steps evaluates the same
    # first k strengths and returns the best of them. At target 3.0 this has teeth: the search
    # overshoots once (its 5th point is worse than its 4th), so a calibrate that returned its last
    # point instead of its best would fail here.
    target, cal = 3.0, cals[3.0]
    raw = [abs(np.log(kl / target)) for _, kl in cal.steps]
    assert any(b > a for a, b in zip(raw, raw[1:])), cal.steps
    cut = [iv.calibrate(batch, sae, HOOK, j, target_kl=target, max_steps=k)
           for k in range(1, len(cal.steps) + 1)]
    assert [c.steps for c in cut] == [cal.steps[:k] for k in range(1, len(cal.steps) + 1)]
    assert all(err(a, target) >= err(b, target) for a, b in zip(cut, cut[1:])), cut
    assert cut[-1] == cal
    cal = cals[0.5]
    kls = [batch.mean_kl(batch.logprobs(sae, HOOK, j, cal.strength * f)) for f in (0.25, 0.5, 1, 2)]
    assert all(a < b for a, b in zip(kls, kls[1:])), kls
    steps = sorted(cal.steps)
    assert all(a[1] <= b[1] for a, b in zip(steps, steps[1:])), steps


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory, subject, rows):
    """A cache of a random TopK SAE on the session rows (built here: no demo run needed)."""
    sae = random_topk_sae()
    reader = cache.build_cache(tmp_path_factory.mktemp("iv") / "cache", subject, sae,
                               "model.layers.4", rows, sae_id="random", corpus_hash="test",
                               progress=False)
    return sae, reader


def test_prompts_end_at_first_activation(subject, rows, small_cache):
    sae, reader = small_cache
    # First firing position per row (BOS left out), straight from a forward hook and the SAE.
    seen = []
    handle = subject.module("model.layers.4").register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.inference_mode():
        subject.hf(torch.from_numpy(rows).long())
        handle.remove()
        acts = sae.encode(seen[0]).numpy()[:, 1:] > 0  # [rows, ctx - 1]

    def first_fire(j):
        return {r: int(np.argmax(acts[r, :, j])) + 1 for r in range(len(rows)) if acts[r, :, j].any()}

    # Latents firing late in some rows and early in others, so min_len/max_len cut something.
    cands = [j for j in range(reader.d_sae)
             if len(f := first_fire(j)) >= 6 and min(f.values()) < 3 and max(f.values()) >= 8]
    assert len(cands) >= 3, cands
    for j in cands[:3]:
        fire = first_fire(j)
        for kw in (dict(n=5, seed=3), dict(n=4, seed=0, min_len=4, max_len=12), dict(n=100)):
            got = iv.prompts_from_cache(reader, j, **kw)
            lo, hi = kw.get("min_len", 4), kw.get("max_len", rows.shape[1])
            eligible = {r for r, p in fire.items() if lo <= p + 1 <= hi}
            assert len(got) == min(kw["n"], len(eligible)) > 0, (j, kw)
            used = set()
            for p in got:
                [r] = [r for r in eligible if np.array_equal(rows[r, :len(p)], p)] or [None]
                assert r is not None, "prompt is not the prefix of an eligible row"
                assert len(p) - 1 == fire[r], "prompt does not end at the row's first activation"
                used.add(r)
            assert len(used) == len(got), "a row was used twice"
            # Without a cache, encoding the rows on the fly picks the same prompts.
            again = iv.prompts_from_rows(subject, sae, "model.layers.4", rows, j, **kw)
            assert len(again) == len(got) and all(np.array_equal(a, b) for a, b in zip(again, got))


def test_random_sae_control_near_zero_and_deterministic(subject, rows):
    # Random control: prompts where each random latent fires, the full pipeline, 4 prompts each.
    sae = saes.random_sae(576, 512, 16, seed=2, hook=HOOK)
    kw = dict(n_tokens=4, seed=0, target_kl=0.5)
    res = []
    for j in (0, 1, 2):
        prompts = iv.prompts_from_rows(subject, sae, HOOK, rows, j, 4, seed=0)
        if len(prompts) >= 2:
            res.append(iv.score_latent(subject, sae, HOOK, j, prompts, control=iv.RANDOM_SAE, **kw))
    assert len(res) >= 2
    assert all(r.scorer == "intervention" and r.control == iv.RANDOM_SAE for r in res)
    for r in res:  # per-prompt scores are the NLL drops; the latent's score is their mean +- SEM
        d = np.array([e.details["nll_clean"] - e.details["nll_intervened"] for e in r.examples])
        assert [e.score for e in r.examples] == pytest.approx(list(d))
        assert [e.example_id for e in r.examples] == list(range(len(d))) and all(e.label for e in r.examples)
        assert r.metrics.n_pos == len(d) and r.metrics.n_neg == 0
        assert r.metrics.mean_score == pytest.approx(d.mean())
        assert r.metrics.sem == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)))
    mean = float(np.mean([r.metrics.mean_score for r in res]))
    # Threshold: 1 nat on the summed NLL of a ~3-token explanation (the reference's random-SAE
    # control is 0.60 nats as a MAXIMUM over latents; trained latents reach 3.37).
    assert abs(mean) < 1.0, [(r.latent, r.explanation, r.metrics.mean_score) for r in res]
    again = iv.score_latent(subject, sae, HOOK, res[0].latent,
                            iv.prompts_from_rows(subject, sae, HOOK, rows, res[0].latent, 4, seed=0),
                            control=iv.RANDOM_SAE, **kw)
    strip = lambda r: dataclasses.replace(r, usage={})  # noqa: E731 - timings differ
    assert strip(again) == strip(res[0])
    shuf = iv.shuffled_control(res, subject, seed=0)
    assert [s.explanation for s in shuf] != [r.explanation for r in res]
    assert all(s.control == iv.SHUFFLED and s.details["strength"] == r.details["strength"]
               for s, r in zip(shuf, res))


def test_planted_unembedding_direction_is_recovered(subject, rows):
    # Latent 5's decoder row = the least-squares direction, at the last layer's output, that
    # raises token t's logit relative to every other token: with A = unembedding * final RMSNorm
    # gain, centred over the vocabulary (a shared shift does not change softmax),
    # d = (A^T A)^-1 A[t]. (The plain row A[t] raises large-norm tokens such as ' strugg' more
    # than t itself.) The intervention's top raised token must be t.
    hf = subject.hf
    tok = subject.tokenizer
    target = tok(" zebra", add_special_tokens=False)["input_ids"]
    assert len(target) == 1
    t = target[0]
    hook = f"model.layers.{subject.n_layers - 1}"
    sae = saes.random_sae(576, 64, 4, seed=3, hook=hook)
    with torch.no_grad():
        a = hf.lm_head.weight * hf.model.norm.weight
        a = a - a.mean(0)
        d = torch.linalg.solve(a.T @ a, a[t])
        sae.W_dec[5] = d / d.norm()
    batch = iv.PromptBatch(subject, _prompts(rows))
    cal = iv.calibrate(batch, sae, hook, 5, target_kl=0.5)
    raised = iv.raised_tokens(batch.clean, batch.logprobs(sae, hook, 5, cal.strength), tok, 3)
    assert raised[0][0] == " zebra", raised
    assert "zebra" in iv.explain_raised(raised)


def test_explanation_nll_matches_unpadded_reference(subject):
    # explanation_nll scores passages of different lengths in right-padded batches; the reference
    # runs each passage alone, unpadded, and sums -log p of the explanation's tokens after the
    # template (explanation + "'" tokenised on its own, as explanation_nll does).
    tok = subject.tokenizer
    passages = ["def f(x):\n    return x", "The cat sat on the mat. " * 6, "import os",
                "Rain fell all night over the quiet harbour town, and by morning the streets shone."]
    explanation = "zebra, stripes"
    target = tok(explanation + "'", add_special_tokens=False)["input_ids"]
    ref = []
    for p in passages:
        text = iv.TEMPLATE.format(passage=p)
        prefix = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
        ids = prefix + target
        # the ids spell the intended text: the template, then the explanation and the closing quote
        assert tok.decode(ids, skip_special_tokens=True) == text + explanation + "'"
        with torch.inference_mode():
            logits = subject.hf(torch.tensor([ids])).logits[0].double()
        nll = torch.nn.functional.cross_entropy(logits[len(prefix) - 1:-1], torch.tensor(target),
                                                reduction="sum")
        ref.append(float(nll))
    assert len({len(tok(p)["input_ids"]) for p in passages}) == len(passages)  # padding happens
    for bs in (8, 3, 1):  # one padded batch, a batch split across chunks, no padding at all
        got = iv.explanation_nll(subject, passages, explanation, batch_size=bs)
        # measured: at most 4e-5 nats apart (fp32 batched vs unbatched) on sums of ~30 nats
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-4)
    assert len(set(np.round(ref, 3))) == len(ref)  # the passages do change the NLL


def test_known_answer_rewards_the_true_word_over_another(subject, rows):
    # Planted directions that raise one word each, through the same scoring path as a latent:
    # each word must be its direction's top raised token, and the word itself must score above
    # another word's on the same generations, for every word.
    from autointerp import steering

    class Rows:
        tokens = rows

    ka = steering.known_answer(subject, Rows(), words=(" ocean", " music", " fire"), n_prompts=4,
                               max_len=20, gen_tokens=4, calibration_steps=10, progress=False)
    assert ka.hits == 3, [r.details["raised"] for r in ka.results["known_raised"]]
    true, shuf = ka.results["known_true"], ka.results["known_shuffled"]
    assert [r.explanation for r in true] == ["ocean", "music", "fire"]
    assert all(s.explanation != t.explanation for s, t in zip(shuf, true))
    assert all(t.metrics.mean_score > s.metrics.mean_score for t, s in zip(true, shuf)), \
        [(t.metrics.mean_score, s.metrics.mean_score) for t, s in zip(true, shuf)]
    summ = steering.known_answer_summary(ka)
    assert summ["hits"] == 3 and summ["verdict"] == metrics.TOO_FEW
    assert "Too few words" in steering.known_answer_verdict(ka)
    with pytest.raises(ValueError, match="one token each"):
        steering.planted_output_sae(subject, [" zzqxj"])
