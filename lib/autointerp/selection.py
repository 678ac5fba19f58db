"""Explanations that improve (METHODS §3): best-of-k selection and refinement by a cheap scorer.

Every latent gets several candidate explanations (k samples of the chat explainer at T > 0, k of
the completion explainer, chapter 02's explanations, the non-LLM ones). Its test examples are cut
into two disjoint halves (``split``): a **selection** split, on which a cheap scorer ranks the
candidates and the best is kept, and a **held-out** split that played no part in the choice. The
kept candidate is compared with a seeded random candidate on the held-out split (paired over
latents): on the selection split the kept one wins by construction, so only the held-out
difference says whether selecting helps. ``Selection.optimism`` is the gap between the two.

Refinement shows the explainer its kept explanation with the excerpts the scorer got most wrong
on the selection split (activating ones it scored lowest, silent ones it scored highest) and asks
for a revision; every round is scored on both splits, so a user sees whether revising helps or
overfits. Results: ``scores/selection.jsonl``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import examples, explanations, metrics, results, scoring
from .explain import LLMExplainer
from .llm.client import ChatRequest
from .records import Explanation, LatentExamples, Window
from .rundir import RunDir


def latents_for(rundir: RunDir, n: int) -> list[LatentExamples]:
    """The first ``n`` latents chapter 02 explained (by any explainer), with their examples."""
    explained = {r.latent for r in explanations.load_records(rundir.root)[1] if not r.failed}
    lexs = [x for x in examples.load(rundir.require("examples"))[1] if not x.skipped and x.latent in explained]
    if len(lexs) < 2:
        raise ValueError(f"Only {len(lexs)} explained latent(s) in {rundir.root}: run chapter 02 first.")
    return lexs[:n]


@dataclass(frozen=True)
class Split:
    """Per latent: the selection half and the held-out half of its test examples."""

    selection: dict[int, list[Window]]
    heldout: dict[int, list[Window]]


def split(lexs: Sequence[LatentExamples], *, n_pos: int | None = None, n_neg: int | None = None) -> Split:
    """Each latent's test examples (``scoring.select_examples``: activating spread over quantiles,
    then negatives) dealt alternately into two halves, activating and silent ones separately, so
    both halves cover the quantiles and hold both kinds."""
    sel, held = {}, {}
    for lx in lexs:
        wins = scoring.select_examples(lx, n_pos=n_pos, n_neg=n_neg)
        pos, neg = [w for w in wins if w.label], [w for w in wins if not w.label]
        if min(len(pos), len(neg)) < 2:
            continue  # a half needs both kinds
        sel[lx.latent] = pos[0::2] + neg[0::2]
        held[lx.latent] = pos[1::2] + neg[1::2]
    if len(sel) < 2:
        raise ValueError(f"Only {len(sel)} latent(s) have 2+ activating and 2+ silent test examples to split; "
                         "raise n_pos/n_neg or use a run with more examples per latent.")
    return Split(sel, held)


@dataclass(frozen=True)
class Candidate:
    """One candidate explanation of one latent and where it came from."""

    latent: int
    source: str  # explainer name, "#sample" for best-of-k samples, or "yours"
    text: str


def candidates(records: Sequence[Explanation], latents: Sequence[int]) -> dict[int, list[Candidate]]:
    """Every successful explanation of each latent as a candidate (identical texts once, first kept)."""
    out: dict[int, list[Candidate]] = {j: [] for j in latents}
    for r in records:
        if r.latent in out and not r.failed and r.text and r.text not in {c.text for c in out[r.latent]}:
            src = r.explainer + (f"#{r.sample}" if r.n_samples > 1 else "")
            out[r.latent].append(Candidate(r.latent, src, r.text))
    return out


def success_rates(records: Sequence[Explanation]) -> dict[str, dict[str, Any]]:
    """Per LLM explainer: replies, parsed explanations, their share, and the failure kinds."""
    out: dict[str, dict[str, Any]] = {}
    for r in records:
        if r.model is None:  # a non-LLM explainer
            continue
        d = out.setdefault(r.explainer, {"replies": 0, "parsed": 0, "failures": {}})
        d["replies"] += 1
        d["parsed"] += int(not r.failed)
        if r.failed:
            kind = r.details.get("failure", "other")
            d["failures"][kind] = d["failures"].get(kind, 0) + 1
    for d in out.values():
        d["share"] = d["parsed"] / d["replies"] if d["replies"] else float("nan")
    return out


def score_all(scorer, cands: Mapping[int, Sequence[Candidate]],
              windows: Mapping[int, Sequence[Window]]) -> dict[int, list[Any]]:
    """latent -> one ``ScorerResult`` per candidate (in order), from ``scorer`` on ``windows``: one
    scorer call per candidate rank, every latent that has a candidate at that rank in it."""
    out: dict[int, list[Any]] = {j: [] for j in cands}
    for c in range(max((len(v) for v in cands.values()), default=0)):
        batch = {j: v[c].text for j, v in cands.items() if len(v) > c}
        for res in scorer.score(batch, {j: windows[j] for j in batch}):
            out[res.latent].append(res)
    return out


def _value(res, metric: str) -> float:
    return float(getattr(res.metrics, metric))


@dataclass(frozen=True)
class Selection:
    """Candidates scored on both splits; the kept one (best on selection) and a random one."""

    candidates: dict[int, list[Candidate]]
    on_selection: dict[int, list[float]]
    on_heldout: dict[int, list[float]]
    kept: dict[int, int]
    random: dict[int, int]
    metric: str
    scorer: str
    split: Split
    results_on_selection: dict[int, list[Any]]  # the ScorerResults behind on_selection (refine reads their examples)

    def kept_minus_random(self, *, seed: int = 0) -> metrics.PairedComparison:
        """Held-out score of the kept candidate minus that of the random one, paired over latents."""
        return metrics.paired_difference({j: self.on_heldout[j][k] for j, k in self.kept.items()},
                                         {j: self.on_heldout[j][k] for j, k in self.random.items()}, seed=seed)

    def optimism(self, *, seed: int = 0) -> metrics.PairedComparison:
        """The kept candidate's selection score minus its held-out score: the selection bias."""
        return metrics.paired_difference({j: self.on_selection[j][k] for j, k in self.kept.items()},
                                         {j: self.on_heldout[j][k] for j, k in self.kept.items()}, seed=seed)

    def kept_text(self, j: int) -> str:
        return self.candidates[j][self.kept[j]].text


def best_of_k(scorer, cands: Mapping[int, Sequence[Candidate]], sp: Split, *, metric: str = "auroc",
              seed: int = 0) -> Selection:
    """Score every candidate on both splits, keep the best on the selection split (ties: the
    first), and draw a seeded random candidate per latent. Latents with fewer than 2 candidates
    or no split are left out (nothing to choose)."""
    use = {j: list(v) for j, v in cands.items() if len(v) >= 2 and j in sp.selection}
    if len(use) < 2:
        raise ValueError(f"Only {len(use)} latent(s) have 2+ candidates and a split: nothing to select.")
    res_sel = score_all(scorer, use, sp.selection)
    on_sel = {j: [_value(r, metric) for r in rs] for j, rs in res_sel.items()}
    on_held = {j: [_value(r, metric) for r in rs] for j, rs in score_all(scorer, use, sp.heldout).items()}
    kept = {j: int(np.nanargmax(np.where(np.isnan(v), -np.inf, v))) for j, v in on_sel.items()}
    rng = np.random.default_rng(seed)
    rand = {j: int(rng.integers(len(use[j]))) for j in sorted(use)}
    return Selection(use, on_sel, on_held, kept, rand, metric, getattr(scorer, "name", type(scorer).__name__), sp,
                     res_sel)


def rank_of(sel: Selection, scorer, latent: int, text: str) -> dict[str, Any]:
    """A new candidate (the playground's "yours") scored on both splits and ranked among the
    latent's candidates on each (1 = best)."""
    sp = {"selection": sel.on_selection[latent], "heldout": sel.on_heldout[latent]}
    out: dict[str, Any] = {"text": text}
    for name, scores in sp.items():
        windows = {latent: (sel.split.selection if name == "selection" else sel.split.heldout)[latent]}
        v = _value(scorer.score({latent: text}, windows)[0], sel.metric)
        out[name] = v
        out[f"{name}_rank"] = 1 + sum(s > v for s in scores)
    out["of"] = len(sel.candidates[latent]) + 1
    return out


def rates_text(rates: Mapping[str, Mapping[str, Any]], chat: Sequence[str] = ("llm", "contrastive", "llm_k"),
               completion: Sequence[str] = ("completion", "completion_k")) -> str:
    """Format success of the chat prompts against the completion prompt, pooled over their explainers."""
    def pooled(names):
        got = [rates[n] for n in names if n in rates]
        n, ok = sum(g["replies"] for g in got), sum(g["parsed"] for g in got)
        return ok, n
    (c_ok, c_n), (p_ok, p_n) = pooled(chat), pooled(completion)
    if not c_n or not p_n:
        return "Format success: one of the two prompt styles did not run."
    better = "the completion prompt" if p_ok / p_n > c_ok / c_n else "the chat prompts"
    return (f"Format success: chat prompts {c_ok} of {c_n} replies parsed ({c_ok / c_n:.0%}); completion prompt "
            f"{p_ok} of {p_n} ({p_ok / p_n:.0%}). On this endpoint {better} yield(s) more explanations; "
            "a parsed reply is not yet a good one: the selection below scores them.")


def figure(sel: Selection):
    """Held-out score of every candidate per latent: all (grey), the kept one, the random one."""
    import plotly.graph_objects as go

    fig = go.Figure()
    lat = sorted(sel.candidates)
    xs = [str(j) for j in lat for _ in sel.candidates[j]]
    fig.add_scatter(x=xs, y=[v for j in lat for v in sel.on_heldout[j]], mode="markers", name="every candidate",
                    marker=dict(color="#cccccc", size=8),
                    text=[c.source for j in lat for c in sel.candidates[j]])
    for name, pick, color in (("kept (best on selection)", sel.kept, "#3b75af"), ("random candidate", sel.random, "#ef8636")):
        fig.add_scatter(x=[str(j) for j in lat], y=[sel.on_heldout[j][pick[j]] for j in lat], mode="markers",
                        name=name, marker=dict(color=color, size=11, symbol="diamond"),
                        text=[sel.candidates[j][pick[j]].source for j in lat])
    fig.update_layout(title=f"Held-out {sel.metric} of each latent's candidates ({sel.scorer})", xaxis_title="latent",
                      yaxis_title=sel.metric, template="plotly_white", height=380, xaxis_type="category")
    return fig


# -- refinement -------------------------------------------------------------------------------------
_REVISE = ("\n\nAn earlier description of this feature was:\n{old}\n\nIt fits some excerpts badly.\n"
           "The feature FIRES on these excerpts, but the description does not fit them:\n{fn}\n\n"
           "The feature does NOT fire on these excerpts, but the description fits them:\n{fp}\n\n"
           "Write a better description that fits where the feature fires and not where it is silent.")


def worst_examples(result, n: int = 2) -> tuple[list[str], list[str]]:
    """(false negatives, false positives): the ``n`` activating examples the scorer scored lowest
    and the ``n`` silent ones it scored highest."""
    scored = [e for e in result.examples if e.score is not None]
    pos = sorted((e for e in scored if e.label), key=lambda e: e.score)[:n]
    neg = sorted((e for e in scored if not e.label), key=lambda e: -e.score)[:n]
    return [e.text for e in pos], [e.text for e in neg]


@dataclass(frozen=True)
class Refinement:
    """Per round (0 = the kept candidate): each latent's text, its scores on both splits, and
    which revisions failed (the latent keeps its previous text in that round)."""

    texts: list[dict[int, str]]
    on_selection: list[dict[int, float]]
    on_heldout: list[dict[int, float]]
    failed: list[dict[int, str]]

    def round_means(self, *, seed: int = 0) -> list[dict[str, Any]]:
        """Mean held-out (and selection) score per round with a bootstrap CI, and the held-out
        change from round 0 (paired)."""
        rows = []
        for r, (s, h) in enumerate(zip(self.on_selection, self.on_heldout)):
            held = metrics.mean_ci(list(h.values()), seed=seed)
            change = metrics.paired_difference(h, self.on_heldout[0], seed=seed).diff
            rows.append({"round": r, "heldout": held.mean, "heldout_low": held.low, "heldout_high": held.high,
                         "selection": metrics.mean_ci(list(s.values()), seed=seed).mean,
                         "change": change.mean, "change_low": change.low, "change_high": change.high,
                         "verdict": metrics.verdict(change) if r else "-", "n": held.n,
                         "revisions_failed": len(self.failed[r])})
        return rows


def refine(sel: Selection, sp: Split, lexs: Mapping[int, LatentExamples], explainer: LLMExplainer, client,
           scorer, decode, *, rounds: int = 2, n_show: int = 2) -> Refinement:
    """``rounds`` revisions of each latent's kept explanation (see module docstring); each round
    asks once per latent, in one batch, and scores the new texts on both splits."""
    texts = [{j: sel.kept_text(j) for j in sel.kept}]
    results_sel = {j: sel.results_on_selection[j][k] for j, k in sel.kept.items()}  # round 0: already scored
    on_sel = [{j: sel.on_selection[j][k] for j, k in sel.kept.items()}]
    on_held = [{j: sel.on_heldout[j][sel.kept[j]] for j in sel.kept}]
    failed: list[dict[int, str]] = [{}]
    for _ in range(rounds):
        prev = texts[-1]
        reqs, order = [], sorted(prev)
        for j in order:
            (_, system), (_, user) = explainer.messages(lexs[j], decode)
            fn, fp = worst_examples(results_sel[j], n_show)
            user += _REVISE.format(old=prev[j], fn="\n".join(f"- {t}" for t in fn) or "(none)",
                                   fp="\n".join(f"- {t}" for t in fp) or "(none)")
            reqs.append(ChatRequest((("system", system), ("user", user)), explainer.max_tokens, explainer.temperature,
                                    seed=explainer.seed + len(texts), tag="refine"))
        resps = client.run(reqs, desc=f"refining (round {len(texts)})")
        new, bad = dict(prev), {}
        for j, req, resp in zip(order, reqs, resps):
            text, error, _ = explainer._read(resp, "\n".join(c for _, c in req.messages))
            if text is None:
                bad[j] = error or "unparsed"
            else:
                new[j] = text
        cands = {j: [Candidate(j, "revised", t)] for j, t in new.items()}
        results_sel = {j: rs[0] for j, rs in score_all(scorer, cands, sp.selection).items()}
        held = {j: rs[0] for j, rs in score_all(scorer, cands, sp.heldout).items()}
        texts.append(new)
        on_sel.append({j: _value(r, sel.metric) for j, r in results_sel.items()})
        on_held.append({j: _value(r, sel.metric) for j, r in held.items()})
        failed.append(bad)
    return Refinement(texts, on_sel, on_held, failed)


# -- reading and writing ------------------------------------------------------------------------------
CLAIM = "selection by a cheap scorer improves held-out scores"


def verdict_text(sel: Selection, *, seed: int = 0) -> str:
    """The kept-vs-random sentence and the optimism sentence, from this run's numbers."""
    d, o = sel.kept_minus_random(seed=seed).diff, sel.optimism(seed=seed).diff
    v = metrics.verdict(d)
    return (f"Kept minus random candidate on the HELD-OUT split ({sel.scorer}, {sel.metric}): {d.mean:+.3f} "
            f"[95% CI {d.low:+.3f}, {d.high:+.3f}] over {d.n} latents: {metrics.READING[v].upper()}.\n"
            f"Optimism of the choice (the kept candidate's selection score minus its held-out score): "
            f"{o.mean:+.3f} [{o.low:+.3f}, {o.high:+.3f}]: what reporting the selection-split score would have overstated.")


def write(rundir: RunDir, sel: Selection, ref: Refinement | None, rates: Mapping[str, Any], *,
          settings: Mapping[str, Any] | None = None, seed: int = 0, **header: Any):
    """``scores/selection.jsonl``: header (scorer, metric, kept minus random, optimism, verdict,
    rounds, success rates), then one record per latent and candidate."""
    d = sel.kept_minus_random(seed=seed)
    recs = [{"latent": j, "candidate": i, "source": c.source, "text": c.text, "selection": sel.on_selection[j][i],
             "heldout": sel.on_heldout[j][i], "kept": i == sel.kept[j], "random_pick": i == sel.random[j]}
            for j, cs in sel.candidates.items() for i, c in enumerate(cs)]
    rounds = ref.round_means(seed=seed) if ref else []
    if ref:
        recs += [{"latent": j, "round": r, "text": t, "selection": ref.on_selection[r][j],
                  "heldout": ref.on_heldout[r][j], "revision_failed": ref.failed[r].get(j)}
                 for r, ts in enumerate(ref.texts) for j, t in ts.items()]
    return results.write(rundir.scores("selection"), "scores", recs, settings=settings, scorer=sel.scorer,
                         metric=sel.metric, kept_minus_random=results.plain(d.diff), comparison=results.plain(d),
                         optimism=results.plain(sel.optimism(seed=seed).diff), verdict=metrics.verdict(d.diff),
                         claim=CLAIM, rounds=rounds, success_rates=dict(rates), **header)


__all__ = ["latents_for", "rates_text", "figure", "Split", "split", "Candidate", "candidates", "success_rates", "score_all", "Selection", "best_of_k",
           "rank_of", "worst_examples", "Refinement", "refine", "CLAIM", "verdict_text", "write"]
