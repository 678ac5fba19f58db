"""Baselines through the very same pipeline as the run's SAE (METHODS §6), for chapter 08.

Each variant is a set of latents read at one hook; every variant goes through cache -> examples ->
explanations -> scorers with the same rows, settings and seeds, in its own run directory
``<run>/variants/<name>`` (the ``RunDir`` layout again):

- ``sae``: the run's SAE (chapter 00), or, when the variants train on another budget
  (``train_tokens``), an SAE of the same shape retrained on that budget with them;
- ``narrow``: an SAE trained the same way with a quarter of the width (wider vs narrower);
- ``mlp``: an SAE trained the same way on the MLP output of the same layer (residual vs MLP);
- ``neurons``: the MLP's hidden units of the SAE's layer, top-k per token (``saes.neuron_sae``);
- ``random_sae``: a random SAE of the same width and k (``saes.random_sae``);
- ``random_model``: an SAE trained the same way on a randomly initialised copy of the model.

``compare`` sets each baseline beside the run's SAE on each scorer (unpaired: other latents), and
``claims`` turns those into the paper's claims with a verdict computed from this run.
"""
from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import cache, examples, explain, explanations, metrics, models, results, saes, scoring
from .findings import exam_passed
from .rundir import RunDir
from .scorers import ScoreRun, run_with_control

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


def build_variant(cfg, name: str, subject, packed, *, train_tokens: int | None = None, progress: bool = True):
    """(sae, hook, the model whose activations it reads, info) for one variant; trained variants
    are trained once into ``variants/<name>/sae`` (sae-lens format) on ``train_tokens`` (None: as
    many as the run's SAE) and reloaded on rerun."""
    if name not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}; known: {VARIANTS}.")
    vdir = cfg.path.variant(name)
    width, k = cfg.sae_width, cfg.sae_k
    same_budget = train_tokens is None or train_tokens == cfg.train_tokens
    if name == "sae" and same_budget:
        sae = saes.load(cfg.sae_spec, device=cfg.device, dtype=cfg.dtype)
        return sae, cfg.hook, subject, {"source": cfg.sae_spec}
    if name == "neurons":
        sae, hook = saes.neuron_sae(subject, models.layer_of(cfg.hook), k=k)
        return sae, hook, subject, {"source": f"neurons of layer {models.layer_of(cfg.hook)}"}
    if name == "random_sae":
        sae = saes.random_sae(subject.hook_dim(cfg.hook), width, k, seed=cfg.seed, hook=cfg.hook)
        return sae.to(subject.device), cfg.hook, subject, {"source": f"random, seed {cfg.seed}"}
    rows = packed.tokens[: max((train_tokens or cfg.train_tokens) // cfg.ctx_len, 1)]
    if name == "random_model":
        reader_model = models.randomly_initialised(subject, cfg.seed)
        if not (vdir.sae_dir / saes.SAE_LENS_WEIGHTS).exists():
            saes.train_topk(reader_model, rows, cfg.hook, vdir.sae_dir, width=width, k=k,
                            batch_tokens=cfg.train_batch_tokens, seed=cfg.seed, progress=progress)
    else:  # narrow, mlp (and sae on another budget) read the same model: trained together, one pass
        reader_model = subject
        together = {"narrow": (cfg.hook, max(width // 4, 4 * k)), "mlp": (mlp_hook(cfg.hook), width)}
        if not same_budget:  # the run's SAE retrained on this budget, so widths and hooks compare fairly
            together["sae"] = (cfg.hook, width)
        saes.train_many(subject, rows, together, cfg.path.path("variants"), k=k, batch_tokens=cfg.train_batch_tokens,
                        seed=cfg.seed, subdir="sae", progress=progress)
    sae = saes.load(str(vdir.sae_dir), device=cfg.device, dtype=cfg.dtype)
    info = json.loads((vdir.sae_dir / "train_report.json").read_text())
    return sae, info["hook"], reader_model, {"source": "trained here", **info}


def mlp_hook(hook: str) -> str:
    """The MLP output of the run hook's layer."""
    return f"model.layers.{models.layer_of(hook)}.mlp"


def run_variant(cfg, name: str, subject, packed, scorers: Mapping[str, Any], *, n_tokens: int,
                n_latents: int, settings: examples.ExampleSettings, n_pos: int | None = None,
                n_neg: int | None = None, max_rate: float = 0.05, train_tokens: int | None = None,
                progress: bool = True) -> VariantResult:
    """One variant through cache, examples, the top-tokens explainer and every scorer in
    ``scorers`` (name -> scorer), each with its shuffled control; scores are written to
    ``variants/<name>/scores/<scorer>.jsonl``."""
    t0 = time.perf_counter()
    sae, hook, reader_model, info = build_variant(cfg, name, subject, packed, train_tokens=train_tokens,
                                                  progress=progress)
    vdir = cfg.path.variant(name)
    vcfg = dataclasses.replace(cfg, run_dir=str(vdir.root), hook=hook, n_tokens=n_tokens, sae=f"variant:{name}")
    reader = cache.for_run(vcfg, reader_model, sae, packed, progress=progress)
    out = saes.output_directions(sae, reader_model, hook)
    # Latents firing on enough tokens may still fire in too few windows: build examples for
    # 3x the candidates, keep the first n_latents that have enough.
    latents = examples.pick_latents(reader.stats, 3 * n_latents, seed=cfg.seed, min_count=settings.min_examples,
                                    max_rate=max_rate)
    lexs = examples.build(reader, latents, settings, decoder=out.numpy(), progress=progress)
    skipped = {x.latent: x.skipped_reason for x in lexs if x.skipped}
    lexs = [x for x in lexs if not x.skipped][:n_latents]
    if len(lexs) < 2:  # a result, not a crash: the other variants still compare
        windows = sorted(int(r.split()[0]) for r in skipped.values() if r.split()[0].isdigit())
        note = (f"only {len(lexs)} of {len(latents)} candidate latents have {settings.min_examples} activating "
                f"windows in {n_tokens:,} tokens (median {int(np.median(windows)) if windows else 0}): its "
                "latents fire on many tokens of few rows. Cache more tokens (n_tokens) or lower min_examples.")
        return VariantResult(name, hook, int(sae.cfg.d_sae), cfg.sae_k, info, {}, skipped,
                             round(time.perf_counter() - t0, 1), note)
    latents = [x.latent for x in lexs]
    decode = examples.TokenDecoder(subject.tokenizer)
    explainer = explain.TopTokensExplainer()
    expl = explain.run_explainers(lexs, [explainer], decode)
    examples.save(vdir.examples, lexs, settings=examples.settings_dict(settings), latents=latents, skipped=skipped)
    explanations.save(vdir.root, expl, explainers=[explainer], skipped=skipped, latents=latents, variant=name)
    inputs = scoring.load_inputs(vdir.root, explainer=explainer.name, n_pos=n_pos, n_neg=n_neg)
    runs = {}
    for sname, scorer in scorers.items():
        runs[sname] = run_with_control(scorer, inputs.explanations, inputs.examples, seed=cfg.seed)
        scoring.write_scores(vdir.root, runs[sname], inputs, scorer=scorer, variant=name, hook=hook)
    return VariantResult(name, hook, int(sae.cfg.d_sae), cfg.sae_k, info, runs, skipped,
                         round(time.perf_counter() - t0, 1))


def _aurocs(run: ScoreRun, control: bool = False) -> list[float]:
    return [r.metrics.auroc for r in (run.control if control else run.real)]


def table(variants: Mapping[str, VariantResult], *, seed: int = 0):
    """Per variant and scorer: mean AUROC [95% CI] of its explanations, of shuffled ones, and
    their paired difference with its verdict."""
    import pandas as pd

    rows = []
    for v in variants.values():
        if not v.runs:
            rows.append({"variant": v.name, "what": WHAT[v.name], "hook": v.hook, "width": v.width,
                         "scorer": "-", "latents": 0, "verdict": f"not scored: {v.note}"})
        for sname, run in v.runs.items():
            real = metrics.mean_ci(_aurocs(run), seed=seed)
            diff = run.comparison.diff
            rows.append({"variant": v.name, "what": WHAT[v.name], "hook": v.hook, "width": v.width,
                         "scorer": sname, "latents": real.n, "AUROC": round(real.mean, 3),
                         "CI": f"[{real.low:.3f}, {real.high:.3f}]",
                         "shuffled": round(metrics.mean_ci(_aurocs(run, True), seed=seed).mean, 3),
                         "real - shuffled": f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]",
                         "verdict": metrics.verdict(diff)})
    return pd.DataFrame(rows).set_index(["scorer", "variant"])


def exam_verdict(rundir: RunDir, scorer: str) -> str:
    """That scorer's planted exam on this run (chapters 05/06): its verdict, or "not taken"."""
    path = rundir.validity(scorer)
    if not path.exists():
        return "not taken"
    return str(results.read(path, "validity")[0].get("verdict", "unknown"))


def claims(variants: Mapping[str, VariantResult], rundir: RunDir, *, seed: int = 0) -> list[dict[str, Any]]:
    """The paper's claims, one row per claim and scorer, from this run: effect (AUROC of the
    higher-expected variant minus the other's, unpaired), 95% CI, latents on each side, the
    scorer's planted exam, and holds / does not hold / inconclusive."""
    rows = []
    for claim, a, b in CLAIMS:
        if a not in variants or b not in variants:
            continue
        for x in (a, b):
            if not variants[x].runs:
                rows.append({"claim": claim, "scorer": "-", "effect": float("nan"), "low": float("nan"),
                             "high": float("nan"), "n_a": 0, "n_b": 0, "planted_exam": "-",
                             "verdict": metrics.TOO_FEW, "reading": f"not measured: {x} {variants[x].note}"})
        for sname in variants[a].runs:
            if sname not in variants[b].runs:
                continue
            va, vb = _aurocs(variants[a].runs[sname]), _aurocs(variants[b].runs[sname])
            d = metrics.unpaired_difference(va, vb, seed=seed)
            v = metrics.verdict(d)
            rows.append({"claim": claim, "scorer": sname, "effect": d.mean, "low": d.low, "high": d.high,
                         "n_a": int(np.isfinite(va).sum()), "n_b": int(np.isfinite(vb).sum()),
                         "planted_exam": exam_verdict(rundir, sname), "verdict": v,
                         "reading": metrics.READING[v]})
    return rows


def claims_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per claim row, graded by its verdict."""
    lines = []
    for r in rows:
        if r["scorer"] == "-":
            lines.append(f"{r['claim']}: {r['reading']}")
            continue
        lines.append(f"{r['claim']} ({r['scorer']}): {r['effect']:+.3f} AUROC [95% CI {r['low']:+.3f}, "
                     f"{r['high']:+.3f}], {r['n_a']} vs {r['n_b']} latents: {r['reading'].upper()}"
                     + ("" if exam_passed(r["planted_exam"]) else
                        f" (this scorer's planted exam: {r['planted_exam']}, so read it with care)") + ".")
    return "\n".join(lines)


def write(rundir: RunDir, variants: Mapping[str, VariantResult], rows: Sequence[Mapping[str, Any]], *,
          settings: Mapping[str, Any] | None = None, seed: int = 0) -> Any:
    """``scores/baselines.jsonl``: header (variants: hook, width, source, seconds), one record per claim row."""
    info = {v.name: {"hook": v.hook, "width": v.width, "k": v.k, "seconds": v.seconds, "note": v.note,
                     "source": v.info.get("source"), "fvu": v.info.get("fvu"),
                     "n_latents": {s: len(r.real) for s, r in v.runs.items()}} for v in variants.values()}
    return results.write(rundir.scores("baselines"), "scores", list(rows), settings=settings,
                         scorer="baselines", metric="auroc", variants=info,
                         verdicts={f"{r['claim']} ({r['scorer']})": r["verdict"] for r in rows})


def figure(variants: Mapping[str, VariantResult], scorer: str, *, seed: int = 0):
    """Mean AUROC (95% CI) per variant: its own explanations beside shuffled ones."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for control, color in ((False, "#3b75af"), (True, "#bbbbbb")):
        xs, ys, hi, lo = [], [], [], []
        for v in variants.values():
            if scorer in v.runs:
                m = metrics.mean_ci(_aurocs(v.runs[scorer], control), seed=seed)
                xs.append(v.name), ys.append(m.mean), hi.append(m.high - m.mean), lo.append(m.mean - m.low)
        fig.add_bar(x=xs, y=ys, name="shuffled explanations" if control else "own explanations", marker_color=color,
                    error_y=dict(type="data", symmetric=False, array=hi, arrayminus=lo))
    fig.add_hline(y=0.5, line_dash="dash", annotation_text="chance")
    fig.update_layout(barmode="group", title=f"{scorer}: mean AUROC per variant (95% CI over latents)",
                      yaxis_title="AUROC", template="plotly_white", height=380, legend=dict(orientation="h", y=-0.2))
    return fig


def browser(rundir: RunDir, names: Sequence[str], decode):
    """Pick a variant, then browse its latents' examples and explanations (chapter 02's browser;
    widgets only, no Output capture, so it renders headless too)."""
    import ipywidgets as w

    from .widgets import explanation_browser

    def inner(name: str):
        vdir = rundir.variant(name)
        lexs = [x for x in examples.load(vdir.require("examples"))[1] if not x.skipped]
        return explanation_browser(lexs, explanations.load_records(vdir.root)[1], decode)

    pick = w.Dropdown(options=[n for n in names if rundir.variant(n).examples.exists()], description="variant")
    box = w.VBox([pick, inner(pick.value)])
    pick.observe(lambda _: setattr(box, "children", (pick, inner(pick.value))), "value")
    return box


def quantile_figure(variants: Mapping[str, VariantResult], scorer: str, *, seed: int = 0):
    """Mean AUROC by activation quantile bin, one line per variant (real explanations)."""
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


__all__ = ["VARIANTS", "WHAT", "CLAIMS", "VariantResult", "build_variant", "run_variant", "table",
           "exam_verdict", "claims", "claims_text", "write", "figure", "browser", "quantile_figure"]
