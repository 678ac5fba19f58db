"""Glue for chapter 07 (intervention scoring): a run's latents steered, explained by their output
effect and scored, next to two controls — the same generations scored with another latent's
explanation (shuffled) and the whole pipeline on a random SAE of the same shape — plus the
chapter-02 (input-side) explanation scored on the same generations. A known-answer case
(``known_answer``: planted directions that raise one word each) checks the scoring path itself.
Figures, a verdict from the run's numbers and ``scores/intervention.jsonl``. The method itself is
``scorers.intervention``.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import examples as ex_mod
from . import explanations, metrics, results
from .records import ScorerResult
from .rundir import RunDir
from .scorers import base
from .scorers import intervention as iv

# The run's knobs per profile are ``config.settings("intervention", profile, ...)``.
CONDITIONS = ("trained", iv.SHUFFLED, iv.RANDOM_SAE, "input_explanation")
# Known-answer words: common nouns that are one token in the SmolLM2/Llama tokenizers.
KNOWN_WORDS = (" ocean", " music", " money", " king", " fire", " garden", " river", " doctor",
               " winter", " bread", " horse", " paper")
KNOWN = ("known_raised", "known_true", "known_shuffled")


def _rundir(run_dir: str | Path | RunDir) -> RunDir:
    return run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)


def chapter_latents(run_dir: str | Path | RunDir, n: int | None = None) -> list[int]:
    """The latents chapter 02 built examples for (not skipped), in order; the first ``n``."""
    return [x.latent for x in ex_mod.load(_rundir(run_dir).require("examples"))[1] if not x.skipped][:n]


def input_explanations(run_dir: str | Path | RunDir) -> dict[int, str]:
    """latent -> the chapter-02 explanation that the scoring chapters use (``explainer="auto"``)."""
    from .scoring import pick_explanations

    return {lat: text for lat, (_, text) in pick_explanations(explanations.load_records(_rundir(run_dir).root)[1])[0].items()}


@dataclass(frozen=True)
class InterventionRun:
    """Results per condition (``CONDITIONS``) and the seconds each took."""

    results: dict[str, list[ScorerResult]]
    seconds: dict[str, float]
    skipped: dict[int, str]


def run_all(subject, sae, hook: str, reader, latents: Sequence[int], *, n_prompts: int = 6,
            max_len: int | None = 48, gen_tokens: int = 8, calibration_steps: int = 14,
            random_rows: int = 96, target_kl: float = 0.5, scorer=None, seed: int = 0,
            input_side: Mapping[int, str] | None = None, random_control: bool = True,
            progress: bool = True, resume: str | Path | None = None) -> InterventionRun:
    """Score ``latents`` of ``sae`` (prompts from the run's cache), then the controls: shuffled
    explanations and (``random_control``) a random SAE on the first ``random_rows`` cached rows;
    ``input_side`` (latent -> text) is also scored on the trained generations. With ``resume`` (a
    run's ``progress`` folder) each steered latent is recorded as it finishes
    (``progress.Progress``), and a rerun after a kill steers only the rest."""
    from tqdm.auto import tqdm

    from . import results
    from .remote import needs_local_weights

    needs_local_weights(subject, "Steering")
    from .cache import sae_fingerprint
    from .progress import Progress, result_from

    scorer = scorer or subject
    kw = dict(target_kl=target_kl, n_tokens=gen_tokens, seed=seed, scorer=scorer,
              calibration_steps=calibration_steps)
    out: dict[str, list[ScorerResult]] = {c: [] for c in CONDITIONS}
    secs: dict[str, float] = {}
    skipped: dict[int, str] = {}
    t0 = time.perf_counter()
    prog = None if resume is None else Progress(resume, "intervention", {
        "sae": sae_fingerprint(sae), "hook": hook, "cache": reader.manifest.corpus_hash, "n_prompts": n_prompts,
        "max_len": max_len, "scorer": getattr(scorer, "name", None), **{k: v for k, v in kw.items() if k != "scorer"}})
    for j in tqdm(list(latents), desc="intervention", disable=not progress):
        rec = prog.get(str(j)) if prog else None
        if rec is None:
            prompts = iv.prompts_from_cache(reader, j, n_prompts, max_len=max_len, seed=seed)
            rec = ({"skipped": f"{len(prompts)} usable prompt(s) (need 2; raise max_len or cache more tokens)"}
                   if len(prompts) < 2 else
                   {"result": results.plain(iv.score_latent(subject, sae, hook, j, prompts, **kw))})
            if prog:
                prog.put(str(j), rec)
        if "skipped" in rec:
            skipped[j] = rec["skipped"]
        else:
            out["trained"].append(result_from(rec["result"]))
    secs["trained"] = time.perf_counter() - t0
    if len(out["trained"]) < 2:
        raise ValueError(f"Only {len(out['trained'])} latent(s) could be steered ({skipped}); the "
                         "shuffled control needs 2 or more: pass more latents.")
    t0 = time.perf_counter()
    out[iv.SHUFFLED] = iv.shuffled_control(out["trained"], scorer, seed=seed)
    secs[iv.SHUFFLED] = time.perf_counter() - t0
    if input_side:
        t0 = time.perf_counter()
        out["input_explanation"] = [iv.rescore(r, input_side[r.latent], scorer, control="input_explanation")
                                    for r in out["trained"] if r.latent in input_side]
        secs["input_explanation"] = time.perf_counter() - t0
    if random_control:
        t0 = time.perf_counter()
        rows = np.asarray(reader.tokens[:random_rows])
        from . import saes

        rnd = saes.random_like(sae, subject, hook, rows, seed=seed)
        picks = firing_latents(subject, rnd, hook, rows, len(out["trained"]), min_rows=2, seed=seed)
        rec = None if prog is None else Progress(resume, "intervention_random", {
            "trained": prog.fingerprint, "random_sae": sae_fingerprint(rnd), "rows": random_rows, "picks": picks})
        out[iv.RANDOM_SAE] = iv.random_sae_control(subject, rnd, hook, picks, rows, n_prompts=n_prompts,
                                                   seed=seed, record=rec,
                                                   **{k: v for k, v in kw.items() if k != "seed"})
        secs[iv.RANDOM_SAE] = time.perf_counter() - t0
    return InterventionRun(out, {k: round(v, 1) for k, v in secs.items()}, skipped)


def firing_latents(subject, sae, hook: str, rows: np.ndarray, n: int, *, min_rows: int = 2,
                   seed: int = 0, batch_size: int = 16) -> list[int]:
    """A seeded sample of ``n`` latents of ``sae`` that fire (after BOS) in >= ``min_rows`` of
    ``rows``. A random SAE's TopK is won by a few directions that align with the residual
    stream's largest dimensions, so most of its latents never fire: picking latent ids blindly
    would leave the random control empty."""
    import torch

    from .cache import encode_batch

    n_rows = np.zeros(int(sae.cfg.d_sae), np.int64)
    for b0 in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.asarray(rows[b0:b0 + batch_size], dtype=np.int64)).to(subject.device)
        n_rows += (encode_batch(subject, sae, hook, ids)[:, 1:] > 0).any(1).sum(0).cpu().numpy()
    ok = np.flatnonzero(n_rows >= min_rows)
    if ok.size == 0:
        raise ValueError(f"No latent of the random SAE fires in {min_rows} of {len(rows)} rows: "
                         "pass more rows (random_rows).")
    pick = np.random.default_rng(seed).choice(ok, min(n, ok.size), replace=False)
    return sorted(int(j) for j in pick)


@dataclass(frozen=True)
class KnownAnswer:
    """Planted output directions through the scoring path: per word, the pipeline's own
    (raised-token) explanation, the word itself, and another word, all on the same generations."""

    words: tuple[str, ...]
    hook: str
    results: dict[str, list[ScorerResult]]  # KNOWN conditions
    seconds: float

    @property
    def hits(self) -> int:
        """Words that are the top raised token of their own direction."""
        return sum(r.details["raised"][0][0].strip() == w.strip()
                   for w, r in zip(self.words, self.results["known_raised"]) if r.details["raised"])


def planted_output_sae(subject, words: Sequence[str], *, seed: int = 0):
    """An SAE whose latent i provably raises ``words[i]``: its decoder row is the least-squares
    direction, at the last layer's output, that raises that token's logit relative to every other
    token (through the final RMSNorm gain and the unembedding, centred over the vocabulary, as a
    shared shift leaves softmax unchanged); the encoder is zero. Returns (sae, hook)."""
    import torch

    from . import saes

    tok, hf = subject.tokenizer, subject.hf
    ids = []
    for w in words:
        t = tok(w, add_special_tokens=False)["input_ids"]
        if len(t) != 1:
            raise ValueError(f"{w!r} is {len(t)} tokens for {subject.name}'s tokenizer: known-answer "
                             "words must be one token each; pick other words.")
        ids.append(t[0])
    hook = f"model.layers.{subject.n_layers - 1}"
    head = hf.get_output_embeddings().weight.detach().float()
    norm = getattr(getattr(hf, "model", None), "norm", None)
    with torch.no_grad():
        # the norm's effective gain, read off its output for an input of RMS 1 (Gemma's RMSNorm
        # scales by 1 + weight, Llama's by weight)
        ones = torch.ones(1, head.shape[1], dtype=head.dtype if norm is None else norm.weight.dtype,
                          device=subject.device)
        gain = norm(ones)[0].float() if norm is not None else torch.ones(head.shape[1], device=head.device)
        a = head * gain
        a = a - a.mean(0)
        d = torch.linalg.solve(a.T @ a, a[ids].T).T
        sae = saes.random_sae(head.shape[1], len(ids), 1, seed=seed, hook=hook)
        sae.W_dec.copy_(d / d.norm(dim=1, keepdim=True))
        sae.W_enc.zero_()
    return sae.to(subject.device), hook


def prompts_at_random(tokens: np.ndarray, n: int, *, min_len: int = 4, max_len: int | None = None,
                      seed: int = 0) -> list[np.ndarray]:
    """``n`` seeded rows, each cut at a seeded length in [min_len, max_len] (BOS first)."""
    top = min(max_len or tokens.shape[1], tokens.shape[1])
    rng = np.random.default_rng(seed)
    rows = sorted(rng.choice(len(tokens), min(n, len(tokens)), replace=False).tolist())
    return [np.asarray(tokens[r, :int(rng.integers(min_len, top + 1))], dtype=np.int64) for r in rows]


def known_answer(subject, reader, n_words: int = 6, *, words: Sequence[str] | None = None,
                 n_prompts: int = 6, max_len: int | None = 48, target_kl: float = 0.5,
                 gen_tokens: int = 8, calibration_steps: int = 14, scorer=None, seed: int = 0,
                 progress: bool = True, resume: str | Path | None = None) -> KnownAnswer:
    """Score planted output directions (``planted_output_sae``) exactly as ``run_all`` scores a
    latent, on prompts cut from the run's cached rows: the raised-token explanation, the true word
    and another word (seeded derangement), all on the same generations. With ``resume`` (a run's
    ``progress`` folder) each word's steering is kept as it finishes."""
    from tqdm.auto import tqdm

    from .cache import sae_fingerprint
    from .progress import Progress, recorded

    words = tuple(words or KNOWN_WORDS[:n_words])
    if len(words) < 2:
        raise ValueError("The known-answer case needs 2 or more words (another word is its control).")
    t0 = time.perf_counter()
    psae, hook = planted_output_sae(subject, words, seed=seed)
    prompts = prompts_at_random(np.asarray(reader.tokens), n_prompts, max_len=max_len, seed=seed)
    scorer = scorer or subject
    kw = dict(target_kl=target_kl, n_tokens=gen_tokens, seed=seed, calibration_steps=calibration_steps)
    prog = None if resume is None else Progress(resume, "known_answer", {
        "sae": sae_fingerprint(psae), "hook": hook, "words": words, "scorer": getattr(scorer, "name", None),
        "prompts": [p.tolist() for p in prompts], **kw})
    raised = [recorded(prog, str(j), lambda: iv.score_latent(subject, psae, hook, j, prompts, scorer=scorer,
                                                              control="known_raised", **kw))
              for j in tqdm(range(len(words)), desc="known answer", disable=not progress)]
    true = [iv.rescore(r, w.strip(), scorer, control="known_true") for r, w in zip(raised, words)]
    shuf = [dataclasses.replace(r, control="known_shuffled") for r in iv.shuffled_control(true, scorer, seed=seed)]
    return KnownAnswer(words, hook, dict(zip(KNOWN, (raised, true, shuf))),
                       round(time.perf_counter() - t0, 1))


def known_answer_summary(ka: KnownAnswer, *, seed: int = 0) -> dict[str, Any]:
    """Hits, the true word minus another word (paired over words) and the mean top-token rise."""
    d = base.compare(ka.results["known_true"], ka.results["known_shuffled"], "mean_score", seed=seed).diff
    return {"words": list(ka.words), "hook": ka.hook, "hits": ka.hits, "true_minus_shuffled": d,
            "verdict": metrics.verdict(d), "top_rise": _top_rise(ka.results["known_raised"])}


def _top_rise(res: Sequence[ScorerResult]) -> float:
    """Mean over latents of the probability rise of their top raised token."""
    rises = [r.details["raised"][0][1] for r in res if r.details.get("raised")]
    return float(np.mean(rises)) if rises else math.nan


def known_answer_verdict(ka: KnownAnswer, run: InterventionRun | None = None, *, seed: int = 0) -> str:
    """What the known answer says about the scoring path, and about ``run``'s result beside it."""
    s = known_answer_summary(ka, seed=seed)
    d, v, n = s["true_minus_shuffled"], s["verdict"], len(ka.words)
    lines = [f"Planted directions at {ka.hook}: {s['hits']} of {n} words came out as their direction's top "
             f"raised token (mean probability rise {s['top_rise']:.3f}).",
             f"True word - another word, same generations: {d.mean:+.3f} nats [95% CI {d.low:+.3f}, {d.high:+.3f}]."]
    if v == metrics.ABOVE:
        lines.append("The scoring path rewards a true output explanation: calibration, generation and the "
                     "scorer LM's NLL work when the output effect is one clear word.")
        if run is not None and run.results.get("trained"):
            rs = summary(run, seed=seed)["trained_minus"].get(iv.SHUFFLED)
            if rs is not None and metrics.verdict(rs) != metrics.ABOVE:
                lines.append(
                    f"So this run's trained-vs-shuffled result ({rs.mean:+.3f} [{rs.low:+.3f}, {rs.high:+.3f}]) "
                    "is not a defect of the path. At the same KL, the SAE's latents raised their top token by "
                    f"{_top_rise(run.results['trained']):.3f} on average, against {s['top_rise']:.3f} for a "
                    "planted word: their effect is spread over many tokens, and the raised-token "
                    "explanations (e.g. " + ", ".join(repr(r.explanation) for r in run.results["trained"][:3])
                    + ") name fragments that a 135M scorer cannot tell from another latent's.")
    elif v == metrics.TOO_FEW:
        lines.append(f"Too few words for a claim: raise known_words to {metrics.MIN_LATENTS_FOR_CLAIM} or more.")
    else:
        lines.append("Even a known, one-word output effect is not rewarded over another word: with this "
                     "scorer LM and these settings the intervention scores above are not evidence either "
                     "way. Try a larger scorer_model, a higher target_kl or more gen_tokens.")
    return "\n".join(lines)


def table(run: InterventionRun):
    """One row per latent and condition: score (nats) +- SEM, strength, KL, explanation."""
    import pandas as pd

    rows = [{"latent": r.latent, "condition": c, "mean_score": r.metrics.mean_score, "sem": r.metrics.sem,
             "strength": r.details["strength"], "strength_rel": r.details["strength_rel"],
             "kl": r.details["achieved_kl"], "explanation": r.explanation}
            for c, res in run.results.items() for r in res]
    return pd.DataFrame(rows).set_index(["condition", "latent"]).round(3)


def summary(run: InterventionRun, *, seed: int = 0) -> dict[str, Any]:
    """Per condition: mean score with a bootstrap CI and the max over latents (the reference
    reports maxima); trained minus each control (``base.compare`` on ``mean_score``: paired for
    controls that reuse the trained generations of the same latents, unpaired for the random
    SAE, whose latents are other directions)."""
    res = {c: r for c, r in run.results.items() if r}
    score = {c: [x.metrics.mean_score for x in r] for c, r in res.items()}
    out: dict[str, Any] = {"conditions": {c: {"mean": metrics.mean_ci(v, seed=seed), "max": float(max(v)),
                                              "n": len(v)} for c, v in score.items()}}
    lat = {c: sorted(x.latent for x in r) for c, r in res.items()}
    out["trained_minus"] = {
        c: base.compare(res["trained"], r, "mean_score", seed=seed,
                        paired=c != iv.RANDOM_SAE and lat[c] == lat["trained"]).diff
        for c, r in res.items() if c != "trained"}
    return out


def verdict(run: InterventionRun, *, seed: int = 0) -> str:
    """Plain sentences from this run's numbers."""
    s = summary(run, seed=seed)
    cond = s["conditions"]
    lines = [f"{c}: mean {v['mean'].mean:+.3f} nats [95% CI {v['mean'].low:+.3f}, {v['mean'].high:+.3f}], "
             f"max {v['max']:+.3f} over {v['n']} latents" for c, v in cond.items()]
    said = {metrics.ABOVE: "the trained SAE's interventions are explained better than this control.",
            metrics.BELOW: ("WORSE than this control: the interventions are explained better by this "
                            "control than by the latents' own output explanations. That is not a null "
                            "result: investigate (a defect, or what this scorer LM rewards)."),
            metrics.NOT_DISTINGUISHABLE: "NOT distinguishable from this control on this run.",
            metrics.TOO_FEW: "too few latents for a claim."}
    outcome = {c: metrics.verdict(d) for c, d in s["trained_minus"].items()}
    for c, d in s["trained_minus"].items():
        lines.append(f"trained - {c} (means): {d.mean:+.3f} [{d.low:+.3f}, {d.high:+.3f}]: {said[outcome[c]]}")
    if cond["trained"]["n"] < metrics.MIN_LATENTS_FOR_CLAIM:
        lines.append(f"Only {cond['trained']['n']} latents were steered: a claim needs "
                     f"{metrics.MIN_LATENTS_FOR_CLAIM} or more (raise n_latents).")
    elif metrics.ABOVE not in outcome.values():
        lines.append("No control is beaten: with this scorer model the intervention scores are not a "
                     "finding. A larger scorer LM (scorer_model) is what the method needs.")
    maxima = ", ".join(f"{c} {cond[c]['max']:+.2f}" for c in ("trained", iv.RANDOM_SAE, iv.SHUFFLED) if c in cond)
    lines.append("Maxima over latents, the statistic the reference reports (Gemma-2-9B as subject and scorer, "
                 f"layer 32: trained 3.37, random SAE 0.60, shuffled 0.51 nats); this run: {maxima}.")
    return "\n".join(lines)


def figure(run: InterventionRun, title: str = ""):
    """Per latent: score (nats, +-SEM) of the trained SAE with its output explanation, shuffled
    explanations and the chapter-02 explanation; the random SAE's latents beside them."""
    import plotly.graph_objects as go

    colors = {"trained": "#3b75af", iv.SHUFFLED: "#bbbbbb", "input_explanation": "#e0a030",
              iv.RANDOM_SAE: "#b05050"}
    fig = go.Figure()
    for c, res in run.results.items():
        if res:
            sem = [r.metrics.sem for r in res]
            fig.add_bar(x=[str(r.latent) for r in res], y=[r.metrics.mean_score for r in res], name=c,
                        marker_color=colors.get(c), hovertext=[r.explanation for r in res],
                        error_y=dict(type="data", array=[0 if math.isnan(v) else v for v in sem]))
    fig.add_hline(y=0, line_dash="dash")
    fig.update_layout(barmode="group", title=title or "Intervention score per latent (nats, +-SEM)",
                      xaxis_title="latent", yaxis_title="NLL(clean) - NLL(intervened), nats", height=400,
                      template="plotly_white", legend=dict(orientation="h", y=-0.3))
    return fig


def calibration_figure(result: ScorerResult):
    """The strength search of one latent: mean KL at every strength tried, and the target."""
    import plotly.graph_objects as go

    steps = sorted(result.usage.get("calibration_steps", ()))
    target = result.details["target_kl"]
    fig = go.Figure(go.Scatter(x=[s for s, _ in steps], y=[k for _, k in steps], mode="lines+markers",
                               name="mean KL(clean || intervened)"))
    fig.add_hline(y=target, line_dash="dash", annotation_text=f"target {target}")
    fig.add_vline(x=result.details["strength"], line_dash="dot", annotation_text="chosen")
    fig.update_layout(title=f"Latent {result.latent}: strength calibration", xaxis_type="log", yaxis_type="log",
                      xaxis_title="strength (activation units)", yaxis_title="mean next-token KL (nats)",
                      height=340, template="plotly_white")
    return fig


def scorer_prompt(result: ScorerResult, index: int = 0, intervened: bool = True) -> str:
    """The exact text the scorer LM reads for one prompt (the explanation is what it predicts)."""
    e = result.examples[index].details
    return iv.TEMPLATE.format(passage=e["intervened"] if intervened else e["clean"]) + result.explanation + "'"


def write_results(run_dir: str | Path | RunDir, run: InterventionRun, *, seed: int = 0,
                  known: KnownAnswer | None = None, settings: Mapping[str, Any] | None = None,
                  **header: Any) -> Path:
    """``<run_dir>/scores/intervention.jsonl`` (``results.write``, kind "scores"): header (metric,
    summary, timings, skipped latents, the known-answer summary, ``settings``, ``header``), then
    one record per latent and condition (the ``ScorerResult`` plus its ``condition``; the known
    answer's conditions are ``KNOWN``)."""
    recs = [{**results.plain(r), "condition": c} for c, res in run.results.items() for r in res]
    if known is not None:
        recs += [{**results.plain(r), "condition": c} for c, res in known.results.items() for r in res]
        header["known_answer"] = known_answer_summary(known, seed=seed)
    summ = summary(run, seed=seed)
    return results.write(_rundir(run_dir).scores("intervention"), "scores", recs, settings=settings,
                         prompt_hash=results.digest({"template": iv.TEMPLATE}),
                         scorer=iv.NAME, metric="mean_score", summary=summ,
                         verdicts={c: metrics.verdict(d) for c, d in summ["trained_minus"].items()},
                         seconds=run.seconds, skipped=run.skipped, **header)


__all__ = ["CONDITIONS", "chapter_latents", "input_explanations", "InterventionRun", "run_all", "table",
           "summary", "verdict", "figure", "calibration_figure", "scorer_prompt", "write_results", "KNOWN_WORDS",
           "KNOWN", "KnownAnswer", "planted_output_sae", "prompts_at_random", "known_answer",
           "known_answer_summary", "known_answer_verdict"]
