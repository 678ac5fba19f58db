"""Glue for the scoring chapters (05 surprisal, 06 embedding, and the detection / fuzzing /
intervention chapters): a run dir's ``examples.jsonl`` + ``explanations.jsonl`` -> scorer inputs,
one scorer run with its shuffled-explanation control, the planted-latent validity control for the
run's model / hook / corpus, figures, and ``scores/<scorer>.jsonl`` with a provenance header.

Which explanation is scored (``explainer="auto"``): per latent, the first *successful* sample-0
explanation among ``PREFERENCE`` (the plain LLM, the contrastive LLM, the completion-mode LLM, top tokens); the
chosen explainer is recorded per latent in the inputs and in every result record.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import examples as ex_mod
from . import explanations, metrics, results
from .records import Explanation, LatentExamples, Window
from .rundir import RunDir
from .scorers import CHANCE, METRIC_LABELS, Scorer, ScoreRun, write_run

PREFERENCE: tuple[str, ...] = ("llm", "contrastive", "completion", "top_tokens")
JUDGES = ("detection", "fuzzing")  # the LLM-judge scorers


@dataclass(frozen=True)
class ScoringInputs:
    """What a scorer needs for one run: latent -> explanation text, which explainer wrote it,
    and its test windows (``records.Window``); ``skipped`` says why a latent was left out."""

    explanations: dict[int, str]
    explainer: dict[int, str]
    examples: dict[int, list[Window]]
    skipped: dict[int, str] = field(default_factory=dict)


def _interleave(groups: Sequence[Sequence[Any]]) -> list[Any]:
    """Round-robin over groups: the first n items then cover every group evenly."""
    out = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out


def spread_bins(bins: Sequence[int], n: int | None) -> list[int]:
    """``bins`` reordered so that the first ``n`` are spread evenly over the whole range, first
    and last included (e.g. 3 of 10 bins: 0, 4, 9 (rounded), then the rest in order)."""
    bins = list(bins)
    if n is None or n >= len(bins) or n < 1:
        return bins
    first = [bins[i] for i in dict.fromkeys(np.linspace(0, len(bins) - 1, n).round().astype(int).tolist())]
    return first + [b for b in bins if b not in first]


def select_examples(lex: LatentExamples, *, n_pos: int | None = None,
                    n_neg: int | None = None) -> list[Window]:
    """A latent's test examples: activating first, taken round-robin over quantile bins so that
    the first n cover every bin; with fewer examples than bins, the bins taken are spread evenly
    from the strongest to the weakest (``spread_bins``). Then negatives (random and hard
    negatives alternating). ``None`` keeps them all."""
    by_q: dict[int, list[Window]] = {}
    for e in lex.test_activating:
        by_q.setdefault(int(e.quantile), []).append(e)
    pos = _interleave([by_q[q] for q in spread_bins(sorted(by_q), n_pos)])[:n_pos]
    return pos + _interleave([lex.test_negative, lex.test_hard_negative])[:n_neg]


def pick_explanations(records: Sequence[Explanation], explainer: str = "auto",
                      preference: Sequence[str] = PREFERENCE) -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """``(latent -> (explainer, text), latent -> why skipped)`` from chapter 02's records (sample 0).
    ``explainer="auto"`` takes the first successful one in ``preference``; a name takes only that
    explainer (latents where it failed are skipped)."""
    order = tuple(preference) if explainer == "auto" else (explainer,)
    known = {r.explainer for r in records}
    if explainer != "auto" and explainer not in known:
        raise ValueError(f"explainer={explainer!r} is not in explanations.jsonl (it has {sorted(known)}); "
                         "use 'auto' or one of those.")
    by: dict[int, dict[str, Explanation]] = {}
    for r in records:
        if r.sample == 0:
            by.setdefault(r.latent, {})[r.explainer] = r
    picked, skipped = {}, {}
    for lat in sorted(by):
        ok = [(n, by[lat][n].text.strip()) for n in order if n in by[lat]
              and not by[lat][n].failed and (by[lat][n].text or "").strip()]
        if ok:
            picked[lat] = ok[0]
        else:
            skipped[lat] = f"no successful explanation from {list(order)}"
    return picked, skipped


def load_inputs(run_dir: str | Path, *, explainer: str = "auto", n_latents: int | None = None,
                n_pos: int | None = None, n_neg: int | None = None) -> ScoringInputs:
    """Scorer inputs of a run dir (after chapter 02): the first ``n_latents`` explained latents,
    each with ``n_pos`` activating and ``n_neg`` non-activating test windows."""
    rd = RunDir(Path(run_dir))
    lexs = {lx.latent: lx for lx in ex_mod.load(rd.require("examples"))[1]}
    picked, skipped = pick_explanations(explanations.load_records(run_dir)[1], explainer)
    for lat, lx in lexs.items():
        if lx.skipped:
            skipped[lat] = f"examples skipped: {lx.skipped_reason}"
        elif lat not in picked:
            skipped.setdefault(lat, "no explanation")
    keep = [lat for lat in sorted(picked) if lat in lexs and not lexs[lat].skipped][:n_latents]
    wins = {lat: select_examples(lexs[lat], n_pos=n_pos, n_neg=n_neg) for lat in keep}
    for lat in keep:
        if len({e.label for e in wins[lat]}) < 2:
            skipped[lat] = "its test set lacks activating or non-activating examples"
    keep = [lat for lat in keep if lat not in skipped]
    if len(keep) < 2:
        raise ValueError(f"Only {len(keep)} latent(s) have an explanation and both kinds of test "
                         f"examples (skipped: {skipped}); the shuffled control needs 2 or more.")
    return ScoringInputs({k: picked[k][1] for k in keep}, {k: picked[k][0] for k in keep},
                         {k: wins[k] for k in keep}, {k: v for k, v in skipped.items() if k not in keep})


def make_scorers(names: Sequence[str], subject, decode, *, judge=None, seed: int = 0) -> dict[str, Any]:
    """name -> Scorer, built as chapters 03-06 build them, for the input-side scorers in ``names``
    ("intervention" is skipped: it steers, see ``steering``); the judges ask ``judge``
    (``judging.open_judge``)."""
    from . import judging
    from .scorers import detection, embedding, fuzzing, surprisal

    how = judging.judge_settings(judge) if judge is not None else {}
    make = {"embedding": lambda: embedding.EmbeddingScorer(subject.tokenizer, progress=False),
            "surprisal": lambda: surprisal.SurprisalScorer(subject, progress=False),
            "detection": lambda: detection.DetectionScorer(judge.client, decode=decode, seed=seed, **how),
            "fuzzing": lambda: fuzzing.FuzzingScorer(judge.client, decode=decode, mode="default", seed=seed, **how)}
    unknown = sorted(set(names) - set(make) - {"intervention"})
    if unknown:
        raise ValueError(f"Unknown scorer(s) {unknown}; known: {sorted(make)} and 'intervention'.")
    if judge is None and set(names) & set(JUDGES):
        raise ValueError(f"Scorers {sorted(set(names) & set(JUDGES))} need a judge: pass judge=judging.open_judge(run_dir).")
    return {n: make[n]() for n in names if n != "intervention"}


def planted_control(cfg, subject, scorer: Scorer, *, n_tokens: int = 4096, n_examples: int = 10,
                    width: int = 24, seed: int = 0, n_latents: int | None = None,
                    metric: str | None = None) -> dict[str, Any]:
    """Planted latents (4 word classes + 4 frequent words, at most 8) on the first ``n_tokens`` of
    the run's corpus at the run's hook, saved in ``<run_dir>/planted/t<n_tokens>_s<seed>`` (reused
    when there), scored with true and shuffled explanations: ``planted.validity_report``.
    ``n_latents`` keeps the first planted latents only (costly judges); the windows carry
    activation 1 on the concept's tokens (token-level truth); ``metric=None``: AUROC when the
    scorer gives scores, else balanced accuracy."""
    from . import corpus, planted

    tok_file = cfg.path.cache_dir / "tokens.npy"
    tokens = np.load(tok_file) if tok_file.exists() else corpus.for_run(cfg, subject.tokenizer).tokens
    tokens = tokens[:max(8, math.ceil(n_tokens / tokens.shape[1]))]
    out_dir = cfg.path.planted(tokens.size, seed)
    if (out_dir / planted.PLANTED_JSON).exists():
        pset = planted.read_planted(out_dir)
    else:
        pset = planted.build_planted(subject, cfg.hook, tokens, out_dir, n_token_concepts=4, seed=seed)
    kw = dict(n_pos=n_examples, n_neg=n_examples, width=min(width, tokens.shape[1] - pset.first_pos), seed=seed)
    exs = planted.planted_windows(pset, tokens, **kw)
    exs = {lat: exs[lat] for lat in sorted(exs)[:n_latents]}
    return {**planted.validity_report(scorer, pset, exs, seed=seed, metric=metric), "n_tokens": int(tokens.size),
            "folder": str(out_dir), "build_seconds": pset.seconds,
            "concepts": {p.latent: p.concept for p in pset.latents},
            "skipped_concepts": [list(s) for s in pset.skipped]}


def playground_scorer(scorer: Scorer, inputs: ScoringInputs, run: ScoreRun | None = None):
    """``(latent, text) -> (AUROC, per-example scores in the order of inputs.examples[latent])``
    for ``widgets.score_playground`` (scorers may reorder or add examples: scores are matched by
    example id). The run's own explanation is answered from ``run``; other text is scored afresh."""
    done = {(r.latent, r.explanation): r for r in (run.real if run else [])}

    def score(latent: int, text: str) -> tuple[float, list[float | None]]:
        r = done.get((latent, text)) or scorer.score({latent: text}, {latent: inputs.examples[latent]})[0]
        by_id = {e.example_id: e.score for e in r.examples}
        return r.metrics.auroc, [by_id.get(e.id) for e in inputs.examples[latent]]

    return score


def surprisal_prompt(scorer, explanation: str, text: str) -> str:
    """The exact token sequence a ``SurprisalScorer`` reads for one example, decoded: cached
    prefix, `` <explanation>\nSentence:``, then the example (whose tokens are the ones scored)."""
    ids = scorer.prefix_ids + scorer.description_ids(explanation) + scorer.example_ids(text)
    return scorer.tokenizer.decode(ids)


def verdict(run: ScoreRun, validity: Mapping[str, Any] | None = None) -> str:
    """Plain sentences from this run's numbers: does the scorer separate, and is it a finding?"""
    c = run.comparison
    name, chance = METRIC_LABELS.get(run.metric, run.metric), CHANCE.get(run.metric, 0.5)
    lines = [f"Real explanations: mean {name} {c.real.mean:.3f} [95% CI {c.real.low:.3f}, {c.real.high:.3f}]; "
             f"shuffled: {c.control.mean:.3f} [{c.control.low:.3f}, {c.control.high:.3f}]; difference "
             f"{c.diff.mean:+.3f} [{c.diff.low:+.3f}, {c.diff.high:+.3f}] over {c.diff.n} latents "
             f"(real beats shuffled on {c.frac_real_better:.0%} of them)."]
    outcome = metrics.verdict(c.diff)
    if outcome == metrics.TOO_FEW:
        lines.append(f"Only {c.diff.n} latent(s) got a {name} with both explanations: too few for a "
                     f"CI to mean anything (a claim needs {metrics.MIN_LATENTS_FOR_CLAIM}); score more latents.")
    elif outcome == metrics.ABOVE:
        lines.append("The CI of the difference excludes 0: on this run the explanations carry "
                     "information the scorer can use"
                     + (f", but little: a mean {name} of {c.real.mean:.2f} is close to chance ({chance})."
                        if c.real.mean < chance + 0.1 else "."))
    elif outcome == metrics.BELOW:
        lines.append("The CI of the difference lies entirely below 0: real explanations score WORSE "
                     "than another latent's. That is not a null result: investigate (explanations "
                     "that describe the wrong thing, or a scorer that rewards something else).")
    else:
        lines.append("The CI of the difference includes 0: real explanations are not distinguishable "
                     "from shuffled ones here, so this is NOT a finding about the explanations.")
    if c.control.n and c.control.mean > chance + 0.05:
        lines.append(f"The shuffled control sits at {c.control.mean:.3f}, above chance ({chance}): another "
                     "latent's explanation still shares words or a topic with these excerpts (latents "
                     "of one corpus overlap), and a scorer that ties every excerpt scores exactly chance. "
                     "That is why real explanations are compared with it, not with chance.")
    if validity is not None:
        from .planted import SEPARATES, TOO_FEW

        low = validity["diff_ci"][0]
        if validity["verdict"] == TOO_FEW:
            note = "Too few planted latents to judge the scorer: raise planted_latents."
        elif validity["verdict"] != SEPARATES:
            note = ("The scorer cannot even separate known meanings here: every score in this chapter "
                    "is uninformative; use a stronger scorer model.")
        elif low < 0.05:  # separates, but its CI nearly touches 0
            note = (f"The scorer separates known meanings, but only just (the CI's lower end is {low:+.3f}): "
                    "weak evidence that it works on this model and corpus; read the result above with care.")
        elif outcome in (metrics.ABOVE, metrics.BELOW):
            note = ("The scorer works on this model and corpus: the real-latent result above is a "
                    "measurement, within its CI.")
        else:
            note = ("The scorer works on this model and corpus, so the null result above points at the "
                    "explanations, not the scorer.")
        lines.append(f"Validity control (planted latents, known meanings): {validity['summary']}. {note}")
    return "\n".join(lines)


def per_latent_figure(run: ScoreRun, inputs: ScoringInputs | None = None, title: str = ""):
    """Per latent: the run's metric with the real explanation vs the shuffled control."""
    import plotly.graph_objects as go

    name = METRIC_LABELS.get(run.metric, run.metric)
    ctrl = {r.latent: getattr(r.metrics, run.metric) for r in run.control}
    lats = [r.latent for r in run.real]
    x = [f"{lat}" + (f" ({inputs.explainer[lat]})" if inputs else "") for lat in lats]
    fig = go.Figure([go.Bar(x=x, y=[getattr(r.metrics, run.metric) for r in run.real], name="real explanation",
                            marker_color="#3b75af", hovertext=[r.explanation for r in run.real]),
                     go.Bar(x=x, y=[ctrl.get(lat) for lat in lats], name="shuffled (control)",
                            marker_color="#bbbbbb")])
    fig.add_hline(y=CHANCE.get(run.metric, 0.5), line_dash="dash", annotation_text="chance")
    fig.update_layout(barmode="group", title=title or f"{name} per latent",
                      yaxis_range=[-1 if run.metric == "correlation" else 0, 1],
                      xaxis_title="latent (explainer)", yaxis_title=name, height=380,
                      template="plotly_white", legend=dict(orientation="h", y=-0.3))
    return fig


def example_score_figure(run: ScoreRun, unit: str = "score", title: str = ""):
    """Every example's score with the real explanation, per latent: activating vs negatives."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for label, name, color in ((True, "activating", "#2a7a2a"), (False, "negative", "#999999")):
        exs = [(str(r.latent), e) for r in run.real for e in r.examples if e.label == label]
        fig.add_box(x=[lat for lat, _ in exs], y=[e.score for _, e in exs], name=name,
                    marker_color=color, boxpoints="all", jitter=0.4, pointpos=0,
                    hovertext=[e.text for _, e in exs])
    fig.update_layout(boxmode="group", title=title or "Per-example scores with the real explanation",
                      xaxis_title="latent", yaxis_title=unit, height=380, template="plotly_white")
    return fig


def _curve_measure(run: ScoreRun) -> str:
    return "auroc" if run.metric in ("auroc", "correlation") else "recall"


def quantile_curves(run: ScoreRun, *, seed: int = 0) -> dict[str, dict[int, metrics.MeanWithCI]]:
    """Per activation quantile (0 = strongest): mean over latents with a bootstrap CI of that
    bin's AUROC vs all negatives (scorers with scores), else of its recall (0/1 predictions)."""
    measure = _curve_measure(run)
    return {name: metrics.curve_over_latents([r.metrics.by_quantile for r in res], measure=measure, seed=seed)
            for name, res in (("real", run.real), ("shuffled", run.control))}


def quantile_figure(run: ScoreRun, title: str = "", *, seed: int = 0):
    """Per quantile bin: AUROC of its activating examples vs all negatives (or their recall, for
    0/1 predictions), real and shuffled."""
    import plotly.graph_objects as go

    measure = "AUROC" if _curve_measure(run) == "auroc" else "recall"
    fig = go.Figure()
    for (name, curve), color in zip(quantile_curves(run, seed=seed).items(), ("#3b75af", "#999999")):
        q = list(curve)
        m = [curve[k].mean for k in q]
        fig.add_scatter(x=q, y=m, name=name, mode="lines+markers", line_color=color,
                        error_y=dict(type="data", array=[curve[k].high - v for k, v in zip(q, m)],
                                     arrayminus=[v - curve[k].low for k, v in zip(q, m)]))
    if measure == "AUROC":
        fig.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(title=title or f"{measure} by activation quantile (mean over latents, 95% CI)",
                      xaxis_title="quantile bin (0 = strongest activations)", yaxis_title=measure,
                      yaxis_range=[0, 1], height=360, template="plotly_white")
    return fig


def write_scores(run_dir: str | Path, run: ScoreRun, inputs: ScoringInputs, *, scorer: Scorer | None = None,
                 validity: Mapping[str, Any] | None = None, name: str | None = None, **header: Any) -> Path:
    """``scores/<name>.jsonl`` (``scorers.write_run``): header (scorer, metric, comparison, usage
    of the first latent, explainer per latent, skipped latents, validity report, settings and
    prompt hash of ``scorer``, ``header``), then one record per result (real and control), each
    with the explainer that wrote the latent's own explanation; the validity report also goes to
    ``scores/<name>_validity.jsonl``. ``name`` defaults to the scorer's (e.g. ``fuzzing_active``)."""
    rd = RunDir(Path(run_dir))
    name = name or run.real[0].scorer
    path = write_run(rd.scores(name), run, scorer=scorer, name=name,
                     per_latent={lat: {"explainer": ex} for lat, ex in inputs.explainer.items()},
                     usage=run.real[0].usage, explainer=inputs.explainer, skipped=inputs.skipped,
                     validity=validity, **header)
    if validity is not None:  # also on its own, for readers that want only the control
        write_validity(rd.validity(name), validity)
    return path


def write_validity(path: str | Path, validity: Mapping[str, Any]) -> Path:
    """A planted-latent exam (``planted.validity_report``) as a results file: the summary in the
    header, one record per planted latent."""
    head = {k: v for k, v in validity.items() if k != "per_latent"}
    return results.write(path, "validity", validity.get("per_latent", ()), **head)


__all__ = ["PREFERENCE", "ScoringInputs", "select_examples",
           "pick_explanations", "load_inputs", "planted_control", "playground_scorer",
           "surprisal_prompt", "verdict",
           "per_latent_figure", "example_score_figure", "quantile_curves", "quantile_figure", "write_scores",
           "write_validity"]
