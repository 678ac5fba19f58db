"""A family of SAEs around the run's layer, matched latent to latent (chapter 09).

Residual-stream and MLP-output SAEs at adjacent layers, a twin of the run-layer residual SAE with
another random initialisation, and a narrower one, all trained together (``saes.train_many``: one
forward pass per batch feeds every hook) into ``<run>/layers/<name>`` and matched with
``alignment.match``; any of them may come from ``sources`` instead (sae-lens releases at full scale). The paper's finding: adjacent residual SAEs are highly similar, more than MLP
ones; across seeds and widths only part of a dictionary is shared.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import alignment, metrics, models, results, saes
from .rundir import RunDir

HOOKS = {"resid": "model.layers.{}", "mlp": "model.layers.{}.mlp"}  # mlp: models.mlp_output_hook decides
SHARED = 0.7  # matched cosine above which a latent counts as shared (Paulo & Belrose 2025)


@dataclass(frozen=True)
class Family:
    """The trained SAEs by name (``resid<L>``, ``mlp<L>``, ``twin``, ``narrow``), their hooks."""

    layers: tuple[int, ...]
    saes: dict[str, Any]
    hooks: dict[str, str]
    reports: dict[str, saes.TrainReport]


def _layer(hook: str) -> int:
    """The run layer of a residual hook ``model.layers.N`` (chapter 09 builds around it)."""
    layer = models.layer_of(hook) if hook.startswith("model.layers.") else -1
    if hook != HOOKS["resid"].format(layer):
        raise ValueError(f"hook {hook!r}: chapter 09 needs a residual hook 'model.layers.N'.")
    return layer


def specs(hook: str, n_model_layers: int, width: int, n_layers: int = 4, *,
          mlp: Callable[[int], str] = HOOKS["mlp"].format) -> dict[str, tuple[str, int]]:
    """name -> (hook, width): residual and MLP (``mlp(layer)``: its hook) SAEs at ``n_layers`` adjacent
    layers from one below the run's layer, a twin of the run-layer residual SAE and one a quarter as wide."""
    L = _layer(hook)
    first = max(0, min(L - 1, n_model_layers - n_layers))
    hook_of = {"resid": HOOKS["resid"].format, "mlp": mlp}
    out = {f"{kind}{l}": (hook_of[kind](l), width) for kind in HOOKS
           for l in range(first, first + n_layers)}
    out["twin"] = (HOOKS["resid"].format(L), width)
    out["narrow"] = (HOOKS["resid"].format(L), max(width // 4, 64))
    return out


def source_for(name: str, sources: Mapping[str, str]) -> str | None:
    """The spec a family SAE is loaded from (by its name, else its kind; ``{layer}`` filled), or None: train it."""
    kind = name.rstrip("0123456789")
    spec = sources.get(name) or (sources.get(kind) if kind in HOOKS else None)
    return spec.format(layer=int(name[len(kind):])) if spec and name != kind else spec


def train(rundir: RunDir, subject, tokens: np.ndarray, *, width: int, k: int, n_layers: int = 4,
          batch_tokens: int = 512, seed: int = 0, hook: str, sources: Mapping[str, str] | None = None,
          progress: bool = True) -> Family:
    """Train (once) and load the family; trained SAEs are reused on rerun, ``sources`` ones loaded."""
    sp = specs(hook, subject.n_layers, width, n_layers, mlp=lambda l: models.mlp_output_hook(subject, l))
    root = rundir.path("layers")
    given = {n: source_for(n, sources or {}) for n in sp}
    todo = {n: v for n, v in sp.items() if not given[n]}
    reports = saes.train_many(subject, tokens, todo, root, k=k, batch_tokens=batch_tokens, seed=seed,
                              progress=progress) if todo else {}
    loaded = {}
    for n in sp:
        loaded[n] = saes.load(given[n] or str(root / n), device=str(subject.device))
        if given[n]:
            saes.check_fits(loaded[n], subject, sp[n][0])
            reports[n] = saes.loaded_report(loaded[n], given[n], subject, sp[n][0], tokens[-32:])
    layers = tuple(int(n.removeprefix("resid")) for n in sp if n.startswith("resid"))
    return Family(layers, loaded, {n: h for n, (h, _) in sp.items()}, reports)


def layer_matchings(fam: Family, kind: str, *, directions: str = "decoder") -> dict[tuple[int, int], alignment.Matching]:
    """Every pair of layers (a < b) of one kind, matched on decoder (or encoder) directions."""
    d = {l: alignment.directions(fam.saes[f"{kind}{l}"], directions) for l in fam.layers}
    return {(a, b): alignment.match(d[a], d[b], progress=False)
            for i, a in enumerate(fam.layers) for b in fam.layers[i + 1:]}


def gap_table(by_kind: Mapping[str, Mapping[tuple[int, int], alignment.Matching]]):
    """One row per kind and layer pair: gap, mean and median matched cosine, share shared."""
    import pandas as pd

    rows = [{"kind": kind, "layers": f"{a}-{b}", "gap": b - a, "mean cos": float(m.similarity.mean()),
             "median cos": float(np.median(m.similarity)), f"share > {SHARED}": m.share_above(SHARED)}
            for kind, ms in by_kind.items() for (a, b), m in ms.items()]
    return pd.DataFrame(rows).round(3)


def kind_difference(by_kind: Mapping[str, Mapping[tuple[int, int], alignment.Matching]], *, gap: int = 1,
                    seed: int = 0) -> metrics.MeanWithCI:
    """Residual minus MLP mean matched cosine at one layer gap (pairs pooled; unpaired bootstrap)."""
    pooled = {k: np.concatenate([m.similarity for (a, b), m in ms.items() if b - a == gap])
              for k, ms in by_kind.items()}
    return metrics.unpaired_difference(pooled["resid"].tolist(), pooled["mlp"].tolist(), seed=seed)


def kind_text(diff: metrics.MeanWithCI, gaps, floor: alignment.Matching) -> str:
    """The residual-vs-MLP sentence and the random-floor sentence, from this run's numbers."""
    v = metrics.verdict(diff)
    r1, m1 = (gaps[(gaps.kind == k) & (gaps.gap == 1)]["mean cos"].mean() for k in ("resid", "mlp"))
    said = {metrics.ABOVE: "residual SAEs at adjacent layers are MORE alike than MLP ones, as in the paper.",
            metrics.BELOW: "MLP SAEs are more alike than residual ones here: the paper's finding does NOT hold at this scale.",
            metrics.NOT_DISTINGUISHABLE: "not distinguishable at this scale.",
            metrics.TOO_FEW: "too few latents for a claim."}[v]
    f = float(floor.similarity.mean())
    at_floor = gaps[gaps["mean cos"] <= f + 0.05]
    return (f"Adjacent layers (gap 1): residual {r1:.3f} vs MLP {m1:.3f} mean matched cosine; residual - MLP "
            f"{diff.mean:+.3f} [95% CI {diff.low:+.3f}, {diff.high:+.3f}] over {diff.n} matched latents: {said}\n"
            f"Random floor {f:.3f}: " + ("every layer pair stands above it." if at_floor.empty else
                                          f"{len(at_floor)} layer pair(s) ({', '.join(at_floor.kind + ' ' + at_floor.layers)}) "
                                          "sit within 0.05 of it: those dictionaries share little beyond chance."))


def next_layer(fam: Family, hook: str) -> tuple[str, str]:
    """(run layer's residual SAE, the next layer's) names in the family."""
    L = _layer(hook)
    return f"resid{L}", f"resid{fam.layers[fam.layers.index(L) + 1]}"


def pair_browser(subject, fam: Family, a: str, b: str, m: alignment.Matching, rows: np.ndarray):
    """Pick a matched pair (most similar first): the tokens each latent fires on most."""
    import html

    import ipywidgets as w

    from .widgets import view

    ta = token_lists(subject, fam.saes[a], fam.hooks[a], rows, n=8)
    tb = token_lists(subject, fam.saes[b], fam.hooks[b], rows, n=8)
    order = [int(i) for i in np.argsort(-m.similarity) if m.rows[i] in ta and m.cols[i] in tb]
    pick = w.Dropdown(options=[(f"{a}:{m.rows[i]} <-> {b}:{m.cols[i]}  cos {m.similarity[i]:.2f}", i) for i in order],
                      description="pair", layout=w.Layout(width="560px"))
    out = w.HTML()

    def show(_=None) -> None:
        i = pick.value
        out.value = (f"<b>{a} latent {m.rows[i]}</b>: {html.escape(ta[m.rows[i]])}<br><b>{b} latent {m.cols[i]}</b>: "
                     f"{html.escape(tb[m.cols[i]])}<br>matched cosine {m.similarity[i]:.3f}")

    pick.observe(show, "value")
    show()
    return view([pick, out])


def heatmap(by_kind: Mapping[str, Mapping[tuple[int, int], alignment.Matching]], layers: Sequence[int]):
    """Mean matched cosine for every pair of layers, residual and MLP side by side."""
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=len(by_kind), subplot_titles=[f"{k}: mean matched cosine" for k in by_kind])
    for c, (kind, ms) in enumerate(by_kind.items(), start=1):
        z = np.eye(len(layers))
        for (a, b), m in ms.items():
            i, j = layers.index(a), layers.index(b)
            z[i, j] = z[j, i] = float(m.similarity.mean())
        fig.add_heatmap(z=z, x=[str(x) for x in layers], y=[str(x) for x in layers], zmin=0, zmax=1,
                        colorscale="Viridis", showscale=c == len(by_kind), row=1, col=c,
                        text=np.round(z, 2), texttemplate="%{text}")
    fig.update_layout(height=360, template="plotly_white", title="Hungarian-matched decoder cosine by layer pair")
    return fig


def distribution_figure(named: Mapping[str, alignment.Matching]):
    """Histogram of matched cosines, one trace per matching."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, m in named.items():
        fig.add_histogram(x=m.similarity, name=name, opacity=0.6, nbinsx=40, histnorm="probability")
    fig.add_vline(x=SHARED, line_dash="dash", annotation_text=f"shared > {SHARED}")
    fig.update_layout(barmode="overlay", xaxis_title="matched cosine", yaxis_title="share of latents",
                      template="plotly_white", height=340)
    return fig


def token_lists(subject, sae, hook: str, rows: np.ndarray, n: int = 5, batch_size: int = 16) -> dict[int, str]:
    """A cheap explanation per latent that fires on these rows: its n most strongly activating
    distinct tokens, "tok1, tok2, ..." (the top-tokens idea, computed in memory)."""
    from .cache import encode_batch

    best: dict[int, dict[int, float]] = {}
    for b0 in range(0, len(rows), batch_size):
        ids = torch.from_numpy(np.asarray(rows[b0:b0 + batch_size], dtype=np.int64))
        z = encode_batch(subject, sae, hook, ids.to(subject.device))[:, 1:].float().cpu()
        tok = ids[:, 1:]
        r, p, j = z.nonzero(as_tuple=True)
        for t, lat, v in zip(tok[r, p].tolist(), j.tolist(), z[r, p, j].tolist()):
            d = best.setdefault(lat, {})
            d[t] = max(d.get(t, 0.0), v)
    return {lat: ", ".join(repr(subject.tokenizer.decode([t]))[1:-1]
                           for t, _ in sorted(d.items(), key=lambda x: -x[1])[:n])
            for lat, d in best.items() if len(d) >= 2}


def agreement(subject, fam: Family, a: str, b: str, m: alignment.Matching, rows: np.ndarray, embed_fn, *,
              seed: int = 0) -> alignment.Agreement:
    """Do matched latents of SAEs ``a`` and ``b`` get similar token-list explanations? (matched
    pairs where both latents fire on ``rows``, vs the same pairs shuffled)."""
    ta = token_lists(subject, fam.saes[a], fam.hooks[a], rows)
    tb = token_lists(subject, fam.saes[b], fam.hooks[b], rows)
    keep = [(i, j) for i, j in zip(m.rows.tolist(), m.cols.tolist()) if i in ta and j in tb]
    if len(keep) < 2:
        raise ValueError(f"Only {len(keep)} matched pairs fire on these rows: pass more rows.")
    texts_a, texts_b = [ta[i] for i, _ in keep], [tb[j] for _, j in keep]
    idx = np.arange(len(keep))
    return alignment.explanation_agreement(texts_a, texts_b, (idx, idx), embed_fn, seed=seed)


def write(rundir: RunDir, records: Sequence[Mapping[str, Any]], **header: Any):
    """``scores/alignment.jsonl``: one record per matching (``alignment.to_record`` plus names)."""
    return results.write(rundir.scores("alignment"), "scores", list(records), scorer="alignment",
                         metric="matched cosine", **header)


__all__ = ["HOOKS", "SHARED", "Family", "specs", "source_for", "train", "layer_matchings", "gap_table", "kind_difference",
           "kind_text", "next_layer", "pair_browser", "heatmap", "distribution_figure", "token_lists", "agreement", "write"]
