"""Baselines through the very same pipeline as the run's SAE (METHODS §6), for chapter 08.

Each variant is a set of latents read at one hook; every variant goes through cache -> examples ->
explanations -> scorers with the same rows, settings and seeds, in its own run directory
``<run>/variants/<name>`` (the ``RunDir`` layout again):

- ``sae``: the run's SAE (chapter 00), or, when the variants train on another budget
  (``train_tokens``), an SAE of the same shape retrained on that budget with them;
- ``narrow``: an SAE trained the same way with a quarter of the width (wider vs narrower);
- ``mlp``: an SAE trained the same way on the MLP output of the same layer (residual vs MLP);
- ``neurons``: the MLP's hidden units of the SAE's layer, top-k per token (``saes.neuron_sae``);
- ``random_sae``: a random SAE of the same width and k, or L0 (``saes.random_like``);
- ``random_model``: an SAE trained the same way on a randomly initialised copy of the model.

Trained variants may instead come from ``sources`` (name -> an SAE spec for ``saes.load``: a folder
or ``sae-lens:RELEASE/SAE_ID``, ``{layer}`` filled in), as the full profile does with Gemma Scope.
Scorers: the input-side ones (embedding, surprisal, and the LLM judges, each with its shuffled
control) and intervention (``steering.run_all``: its raised-token explanation against another
latent's). ``plan`` says which run: a judge joins only when its planted exam on this run passed.
``claims`` sets each baseline beside the run's SAE on each scorer (unpaired: other latents) and
reads each claim with a verdict computed from this run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import cache, examples, explain, explanations, metrics, models, results, saes, scoring, steering
from .findings import exam_passed, exam_verdict
from .rundir import RunDir
from .scorers import CHANCE, METRIC_LABELS, ScoreRun, compare, run_with_control, write_run
from .scorers import intervention as iv

INTERVENTION = "intervention"
JUDGES = scoring.JUDGES

VARIANTS = ("sae", "narrow", "mlp", "neurons", "random_sae", "random_model")
WHAT = {"sae": "the run's SAE", "narrow": "SAE, 1/4 of the width", "mlp": "SAE on the MLP output, same layer",
        "neurons": "MLP neurons, top-k",
        "random_sae": "random SAE, same width and k", "random_model": "SAE trained on a random-init model"}
# (claim, variant that should score higher, variant it is compared with)
CLAIMS = (("SAE latents are more interpretable than neurons", "sae", "neurons"),
          ("wider SAE scores higher than narrower", "sae", "narrow"),
          ("residual SAE scores at least as high as MLP SAE", "sae", "mlp"),
          ("trained SAE scores higher than a random SAE", "sae", "random_sae"),
          ("trained-model SAE scores higher than random-model SAE", "sae", "random_model"))


@dataclass(frozen=True)
class VariantResult:
    """One variant's scores per scorer, and what it is."""

    name: str
    hook: str
    width: int
    k: int
    info: dict[str, Any]
    runs: dict[str, ScoreRun]
    skipped: dict[int, str]
    seconds: float
    note: str = ""  # why the variant has no scores, when it has none
    missing: dict[str, str] = dataclasses.field(default_factory=dict)  # scorer -> why it has no result


def build_variant(cfg, name: str, subject, packed, *, train_tokens: int | None = None,
                  sources: Mapping[str, str] | None = None, progress: bool = True):
    """(sae, hook, the model whose activations it reads, info) for one variant. A name in
    ``sources`` is loaded from that spec (``{layer}`` = the run's layer); other trained variants
    are trained once into ``variants/<name>/sae`` (sae-lens format) on ``train_tokens`` (None: as
    many as the run's SAE) and reloaded on rerun."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}; known: {VARIANTS}.")
    vdir = cfg.path.variant(name)
    width, k, layer = cfg.sae_width, cfg.sae_k, models.layer_of(cfg.hook)
    same_budget = train_tokens is None or train_tokens == cfg.train_tokens
    if name == "sae" and same_budget:
        sae = saes.load(cfg.sae_spec, device=cfg.device, dtype=cfg.dtype)
        return sae, cfg.hook, subject, {"source": cfg.sae_spec}
    if name == "neurons":
        sae, hook = saes.neuron_sae(subject, layer, k=k)
        return sae, hook, subject, {"source": f"neurons of layer {layer}"}
    if name == "random_sae":
        if cfg.sae == "train":  # the run trains a TopK SAE of this width and k
            sae = saes.random_sae(subject.hook_dim(cfg.hook), width, k, seed=cfg.seed, hook=cfg.hook).to(
                device=subject.device, dtype=next(subject.hf.parameters()).dtype)
        else:  # a loaded SAE: its width, and its k or (JumpReLU) its L0
            run_sae = saes.load(cfg.sae_spec, device=cfg.device, dtype=cfg.dtype)
            sae = saes.random_like(run_sae, subject, cfg.hook, packed.tokens, seed=cfg.seed)
        return sae, cfg.hook, subject, {"source": f"random, seed {cfg.seed}"}
    hooks = {"narrow": cfg.hook, "mlp": mlp_hook(subject, cfg.hook), "sae": cfg.hook, "random_model": cfg.hook}
    if sources and name in sources:
        spec = sources[name].format(layer=layer)
        sae = saes.load(spec, device=cfg.device, dtype=cfg.dtype)
        saes.check_fits(sae, subject, hooks[name])
        return sae, hooks[name], subject, {"source": spec, **saes.describe(sae)}
    rows = packed.tokens[: max((train_tokens or cfg.train_tokens) // cfg.ctx_len, 1)]
    if name == "random_model":
        reader_model = models.randomly_initialised(subject, cfg.seed)
        if not (vdir.sae_dir / saes.SAE_LENS_WEIGHTS).exists():
            saes.train_topk(reader_model, rows, cfg.hook, vdir.sae_dir, width=width, k=k,
                            batch_tokens=cfg.train_batch_tokens, seed=cfg.seed, progress=progress)
    else:  # narrow, mlp (and sae on another budget) read the same model: trained together, one pass
        reader_model = subject
        together = {"narrow": (cfg.hook, max(width // 4, 4 * k)), "mlp": (hooks["mlp"], width)}
        if not same_budget:  # the run's SAE retrained on this budget, so widths and hooks compare fairly
            together["sae"] = (cfg.hook, width)
        together = {n: v for n, v in together.items() if n not in (sources or {})}
        saes.train_many(subject, rows, together, cfg.path.path("variants"), k=k, batch_tokens=cfg.train_batch_tokens,
                        seed=cfg.seed, subdir="sae", progress=progress)
    sae = saes.load(str(vdir.sae_dir), device=cfg.device, dtype=cfg.dtype)
    info = json.loads((vdir.sae_dir / "train_report.json").read_text())
    return sae, info["hook"], reader_model, {"source": "trained here", **info}


def mlp_hook(subject, hook: str) -> str:
    """The MLP output of the run hook's layer (``models.mlp_output_hook``)."""
    return models.mlp_output_hook(subject, models.layer_of(hook))


def candidates(reader, n: int, *, min_windows: int, width: int, max_rate: float, seed: int = 0) -> list[int]:
    """A seeded sample of ``n`` latents that fire on <= ``max_rate`` of tokens and in enough rows to
    hold ``min_windows`` non-overlapping windows of ``width`` tokens (a necessary condition, so
    latents that fire on one stretch of one row, as a random-init model's do, are not drawn)."""
    stats = reader.stats
    ok = np.flatnonzero((stats.count >= min_windows) & (stats.firing_rate <= max_rate))
    per_row = -(-(reader.ctx_len - reader.manifest.first_pos) // width)
    rows = np.array([np.unique(reader.latent(int(j))[0] // reader.ctx_len).size for j in ok], dtype=np.int64)
    ok = ok[rows * per_row >= min_windows]
    if ok.size == 0:
        return []
    rng = np.random.default_rng(seed)
    return sorted(int(j) for j in rng.choice(ok, min(n, ok.size), replace=False))


def plan(rundir: RunDir, knobs: Mapping[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(scorers to run on every variant, left-out judge -> why): ``scorers``, then each of
    ``judges`` if ``judges_when`` is "always" or its planted exam on this run passed."""
    names, left_out = list(knobs["scorers"]), {}
    for judge in knobs.get("judges", ()):
        exam = exam_verdict(rundir, judge)
        if knobs.get("judges_when", "exam passed") == "always" or exam_passed(exam):
            names.append(judge)
        else:
            left_out[judge] = (f"its planted exam on this run: {exam!r} (chapter {'03' if judge == 'detection' else '04'}), "
                               "so its comparisons would measure the judge's noise; pass judges_when='always' "
                               "to run it anyway, or point the chapter at a stronger judge")
    return names, left_out


def variant_kwargs(knobs: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """``run_variant``'s sizes from chapter 08's settings, for the scorers in ``names``."""
    judge_sizes = (knobs["judge_latents"], knobs["judge_examples"], knobs["judge_examples"])
    return {"n_tokens": knobs["n_tokens"], "n_latents": knobs["n_latents"], "n_pos": knobs["n_pos"],
            "n_neg": knobs["n_neg"], "max_rate": knobs["max_rate"], "train_tokens": knobs["train_tokens"],
            "sizes": {j: judge_sizes for j in JUDGES if j in names}, "sources": knobs["sources"],
            "steer": knobs["steer"] if INTERVENTION in names else None}


def run_variant(cfg, name: str, subject, packed, scorers: Mapping[str, Any], *, n_tokens: int,
                n_latents: int, settings: examples.ExampleSettings, n_pos: int | None = None,
                n_neg: int | None = None, max_rate: float = 0.2, train_tokens: int | None = None,
                sizes: Mapping[str, tuple[int, int, int]] | None = None, steer: Mapping[str, Any] | None = None,
                steer_scorer=None, sources: Mapping[str, str] | None = None, progress: bool = True) -> VariantResult:
    """One variant through cache, examples, the top-tokens explainer and every scorer: each of
    ``scorers`` (name -> Scorer) with its shuffled control on ``sizes[name]`` = (latents, n_pos,
    n_neg) (default: all, ``n_pos``, ``n_neg``), and, when ``steer`` is given (``steering.run_all``
    sizes plus ``n_latents``), intervention with ``steer_scorer`` (default: ``subject``) reading the
    explanations. Scores go to ``variants/<name>/scores/<scorer>.jsonl``."""
    t0 = time.perf_counter()
    def k_of(sae) -> int:  # a TopK SAE's k, a JumpReLU's mean L0 on the first rows
        return saes.active_k(sae, reader_model, hook, packed.tokens)

    sae, hook, reader_model, info = build_variant(cfg, name, subject, packed, train_tokens=train_tokens,
                                                  sources=sources, progress=progress)
    vdir = cfg.path.variant(name)
    vcfg = dataclasses.replace(cfg, run_dir=str(vdir.root), hook=hook, n_tokens=n_tokens, sae=f"variant:{name}")
    reader = cache.for_run(vcfg, reader_model, sae, packed, progress=progress)
    out = saes.output_directions(sae, reader_model, hook)
    # Latents with enough rows may still fire in too few windows: build examples for 3x the
    # candidates, keep the first n_latents that have enough.
    latents = candidates(reader, 3 * n_latents, min_windows=settings.min_examples, width=settings.example_ctx_len,
                         max_rate=max_rate, seed=cfg.seed)
    lexs = examples.build(reader, latents, settings, decoder=out.numpy(), progress=progress) if latents else []
    skipped = {x.latent: x.skipped_reason for x in lexs if x.skipped}
    lexs = [x for x in lexs if not x.skipped][:n_latents]
    if len(lexs) < 2:  # a result, not a crash: the other variants still compare
        note = (f"only {len(lexs)} of its latents fire in {settings.min_examples} windows of {n_tokens:,} tokens "
                f"while firing on at most {max_rate:.0%} of tokens. Cache more tokens (n_tokens), raise max_rate "
                "or lower min_examples.")
        return VariantResult(name, hook, int(sae.cfg.d_sae), k_of(sae), info, {}, skipped,
                             round(time.perf_counter() - t0, 1), note)
    latents = [x.latent for x in lexs]
    decode = examples.TokenDecoder(subject.tokenizer)
    explainer = explain.TopTokensExplainer()
    expl = explain.run_explainers(lexs, [explainer], decode)
    examples.save(vdir.examples, lexs, settings=examples.settings_dict(settings), latents=latents, skipped=skipped)
    explanations.save(vdir.root, expl, explainers=[explainer], skipped=skipped, latents=latents, variant=name)
    runs, missing = {}, {}
    for sname, scorer in scorers.items():
        k, p, q = (sizes or {}).get(sname, (None, n_pos, n_neg))
        inputs = scoring.load_inputs(vdir.root, explainer=explainer.name, n_latents=k, n_pos=p, n_neg=q)
        runs[sname] = run_with_control(scorer, inputs.explanations, inputs.examples, seed=cfg.seed,
                                       resume=cfg.path.progress_dir)
        scoring.write_scores(vdir.root, runs[sname], inputs, scorer=scorer, variant=name, hook=hook)
    if steer:
        try:
            runs[INTERVENTION] = intervene(reader_model, sae, hook, reader, latents, steer,
                                           scorer=steer_scorer or subject, seed=cfg.seed, progress=progress,
                                           resume=cfg.path.progress_dir)
            write_run(vdir.scores(INTERVENTION), runs[INTERVENTION], variant=name, hook=hook, steer=dict(steer),
                      steered_model=reader_model.name)
        except ValueError as err:  # fewer than 2 latents could be steered: a result, the others still run
            missing[INTERVENTION] = str(err)
    return VariantResult(name, hook, int(sae.cfg.d_sae), k_of(sae), info, runs, skipped,
                         round(time.perf_counter() - t0, 1), missing=missing)


def intervene(model, sae, hook: str, reader, latents: Sequence[int], steer: Mapping[str, Any], *, scorer,
              seed: int = 0, progress: bool = True, resume: str | Path | None = None) -> ScoreRun:
    """Intervention scoring of the first ``steer["n_latents"]`` latents (chapter 07's path: KL-calibrated
    steering of ``model``, raised-token explanation, ``scorer`` NLL) against the shuffled control,
    as a ``ScoreRun`` on "mean_score" (nats)."""
    kw = {k: v for k, v in steer.items() if k != "n_latents"}
    run = steering.run_all(model, sae, hook, reader, list(latents)[: steer["n_latents"]], scorer=scorer, seed=seed,
                           random_control=False, progress=progress, resume=resume, **kw)
    real, control = run.results["trained"], run.results[iv.SHUFFLED]
    return ScoreRun(real, control, compare(real, control, "mean_score", seed=seed),
                    round(sum(run.seconds.values()), 1), "mean_score")


def values(run: ScoreRun, control: bool = False) -> list[float]:
    """Each latent's value of the run's metric (AUROC for most scorers, nats for intervention)."""
    return [float(getattr(r.metrics, run.metric)) for r in (run.control if control else run.real)]


def table(variants: Mapping[str, VariantResult], *, seed: int = 0):
    """Per variant and scorer: the mean of its metric [95% CI] over its own explanations, over
    shuffled ones, and their paired difference with its verdict."""
    import pandas as pd

    rows = []
    for v in variants.values():
        base = {"variant": v.name, "what": WHAT[v.name], "hook": v.hook, "width": v.width}
        if not v.runs:
            rows.append({**base, "scorer": "-", "latents": 0, "verdict": f"not scored: {v.note}"})
        for sname, why in v.missing.items():
            rows.append({**base, "scorer": sname, "latents": 0, "verdict": f"not scored: {why}"})
        for sname, run in v.runs.items():
            real = metrics.mean_ci(values(run), seed=seed)
            diff = run.comparison.diff
            rows.append({**base, "scorer": sname, "metric": METRIC_LABELS[run.metric], "latents": real.n,
                         "mean": round(real.mean, 3), "CI": f"[{real.low:.3f}, {real.high:.3f}]",
                         "shuffled": round(metrics.mean_ci(values(run, True), seed=seed).mean, 3),
                         "real - shuffled": f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]",
                         "verdict": metrics.verdict(diff)})
    return pd.DataFrame(rows).set_index(["scorer", "variant"])


def _not_measured(claim: str, scorer: str, why: str) -> dict[str, Any]:
    nan = float("nan")
    return {"claim": claim, "scorer": scorer, "metric": "-", "effect": nan, "low": nan, "high": nan, "n_a": 0,
            "n_b": 0, "planted_exam": "-", "verdict": metrics.TOO_FEW, "reading": f"not measured: {why}"}


def claims(variants: Mapping[str, VariantResult], rundir: RunDir, *, seed: int = 0) -> list[dict[str, Any]]:
    """The paper's claims, one row per claim and scorer, from this run: effect (the scorer's metric
    for the higher-expected variant minus the other's, unpaired), 95% CI, latents on each side, the
    scorer's own exam (planted latents; known answer for intervention), and holds / does not hold /
    inconclusive."""
    rows = []
    for claim, a, b in CLAIMS:
        if a not in variants or b not in variants:
            continue
        for x in (a, b):
            if not variants[x].runs:
                rows.append(_not_measured(claim, "-", f"{x} {variants[x].note}"))
        for sname in dict.fromkeys([*variants[a].runs, *variants[a].missing, *variants[b].missing]):
            why = variants[a].missing.get(sname) or variants[b].missing.get(sname)
            if why:
                rows.append(_not_measured(claim, sname, why))
                continue
            if sname not in variants[b].runs:
                continue
            run_a, run_b = variants[a].runs[sname], variants[b].runs[sname]
            va, vb = values(run_a), values(run_b)
            d = metrics.unpaired_difference(va, vb, seed=seed)
            v = metrics.verdict(d)
            rows.append({"claim": claim, "scorer": sname, "metric": run_a.metric, "effect": d.mean, "low": d.low,
                         "high": d.high, "n_a": int(np.isfinite(va).sum()), "n_b": int(np.isfinite(vb).sum()),
                         "planted_exam": exam_verdict(rundir, sname), "verdict": v,
                         "reading": metrics.READING[v]})
    return rows


def claims_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per claim row, graded by its verdict."""
    lines = []
    for r in rows:
        if not np.isfinite(r["effect"]):
            lines.append(f"{r['claim']}" + ("" if r["scorer"] == "-" else f" ({r['scorer']})") + f": {r['reading']}")
            continue
        unit = "nats" if r["metric"] == "mean_score" else METRIC_LABELS.get(r["metric"], r["metric"])
        lines.append(f"{r['claim']} ({r['scorer']}): {r['effect']:+.3f} {unit} [95% CI {r['low']:+.3f}, "
                     f"{r['high']:+.3f}], {r['n_a']} vs {r['n_b']} latents: {r['reading'].upper()}"
                     + ("" if exam_passed(r["planted_exam"]) else
                        f" (this scorer's planted exam: {r['planted_exam']}, so read it with care)") + ".")
    return "\n".join(lines)


def write(rundir: RunDir, variants: Mapping[str, VariantResult], rows: Sequence[Mapping[str, Any]], *,
          settings: Mapping[str, Any] | None = None, seed: int = 0) -> Any:
    """``scores/baselines.jsonl``: header (variants: hook, width, source, seconds), one record per claim row."""
    info = {v.name: {"hook": v.hook, "width": v.width, "k": v.k, "seconds": v.seconds, "note": v.note,
                     "source": v.info.get("source"), "fvu": v.info.get("fvu"),
                     "n_latents": {s: len(r.real) for s, r in v.runs.items()}, "missing": v.missing}
            for v in variants.values()}
    return results.write(rundir.scores("baselines"), "scores", list(rows), settings=settings,
                         scorer="baselines", metric="per row", variants=info,
                         verdicts={f"{r['claim']} ({r['scorer']})": r["verdict"] for r in rows})


def figure(variants: Mapping[str, VariantResult], scorer: str, *, seed: int = 0):
    """Mean of the scorer's metric (95% CI) per variant: its own explanations beside shuffled ones."""
    import plotly.graph_objects as go

    fig = go.Figure()
    metric = next((v.runs[scorer].metric for v in variants.values() if scorer in v.runs), "auroc")
    for control, color in ((False, "#3b75af"), (True, "#bbbbbb")):
        xs, ys, hi, lo = [], [], [], []
        for v in variants.values():
            if scorer in v.runs:
                m = metrics.mean_ci(values(v.runs[scorer], control), seed=seed)
                xs.append(v.name), ys.append(m.mean), hi.append(m.high - m.mean), lo.append(m.mean - m.low)
        fig.add_bar(x=xs, y=ys, name="shuffled explanations" if control else "own explanations", marker_color=color,
                    error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo))
    fig.add_hline(y=CHANCE.get(metric, 0.5), line_dash="dash", annotation_text="chance")
    label = METRIC_LABELS[metric] + (" (nats)" if metric == "mean_score" else "")
    fig.update_layout(barmode="group", title=f"{scorer}: {label} per variant (95% CI over latents)",
                      yaxis_title=label, template="plotly_white", height=380, legend=dict(orientation="h", y=-0.2))
    return fig


def browser(rundir: RunDir, names: Sequence[str], decode):
    """Pick a variant, then browse its latents' examples and explanations (chapter 02's browser;
    widgets only, no Output capture, so it renders headless too)."""
    import ipywidgets as w

    from .widgets import explanation_browser, view

    def inner(name: str):
        vdir = rundir.variant(name)
        lexs = [x for x in examples.load(vdir.require("examples"))[1] if not x.skipped]
        return explanation_browser(lexs, explanations.load_records(vdir.root)[1], decode)

    pick = w.Dropdown(options=[n for n in names if rundir.variant(n).examples.exists()], description="variant")
    box = view([pick, inner(pick.value)])
    pick.observe(lambda _: setattr(box, "children", (pick, inner(pick.value))), "value")
    return box


def quantile_figure(variants: Mapping[str, VariantResult], scorer: str, *, seed: int = 0):
    """Mean AUROC by activation quantile bin, one line per variant (real explanations; input-side
    scorers only: intervention scores prompts, not quantiles)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for v in variants.values():
        if scorer in v.runs:
            curve = scoring.quantile_curves(v.runs[scorer], seed=seed)["real"]
            qs = sorted(curve)
            fig.add_scatter(x=qs, y=[curve[q].mean for q in qs], mode="lines+markers", name=v.name,
                            error_y=dict(type="data", symmetric=False,
                                         array=[curve[q].high - curve[q].mean for q in qs],
                                         arrayminus=[curve[q].mean - curve[q].low for q in qs]))
    fig.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(title=f"{scorer}: AUROC by activation quantile (0 = strongest), per variant",
                      xaxis_title="quantile bin", yaxis_title="AUROC", template="plotly_white", height=380)
    return fig


__all__ = ["VARIANTS", "WHAT", "CLAIMS", "INTERVENTION", "JUDGES", "VariantResult", "build_variant", "mlp_hook",
           "candidates", "plan", "variant_kwargs", "run_variant", "intervene", "values", "table", "claims", "claims_text", "write",
           "figure", "browser", "quantile_figure"]
