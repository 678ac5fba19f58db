"""A run's latents as a Neuronpedia-style feature export, and its loader (chapter 12).

``<run>/export/features.jsonl`` is one results file (schema ``autointerp.features/1``): line 1 the
header (model, SAE, hook, provenance), then one feature record per latent whose field names follow
Neuronpedia's feature record: ``modelId``, ``layer``, ``index``, ``hookName``, ``maxActApprox``,
``frac_nonzero``, ``pos_str``/``pos_values`` and ``neg_str``/``neg_values`` (logit lens),
``freq_hist_data_bar_heights``/``freq_hist_data_bar_values`` (activation histogram: counts and bin
centres, parallel arrays), ``topkCosSimIndices``/``topkCosSimValues`` (decoder neighbours),
``activations`` (``tokens``, ``values``, ``maxValue``, ``maxValueTokenIndex``, ``minValue``,
``binMin``, ``binMax``, ``dataIndex``) and ``explanations`` (``description``,
``explanationModelName``, ``typeName``, ``scores``: ``value``, ``explanationScoreTypeName``,
``explanationScoreModelName``). Fields Neuronpedia has no name for start with ``ai_`` (token ids,
window start and quantile, each score's metric and control, bin edges, Hungarian matches), so
``load`` rebuilds the lab's ``Feature`` records (explanations keep their text, explainer, model,
failure and sample; the LLM's raw reply stays in ``explanations.jsonl``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import results
from .lab import Feature, Lab, Score
from .records import Explanation, Window


def _source_id(lab: Lab) -> str:
    """Neuronpedia's ``layer`` field: ``<layer>-<kind>-<sae>`` (e.g. "8-res-autointerp")."""
    from .models import layer_of

    hook = lab.cfg.hook
    kind = "mlp" if ".mlp" in hook else "res"
    return f"{layer_of(hook)}-{kind}-{'autointerp' if lab.cfg.sae == 'train' else lab.cfg.sae.replace('/', '_')}"


def feature_record(f: Feature, lab: Lab) -> dict[str, Any]:
    """One latent in Neuronpedia's field names (plus ``ai_`` fields)."""
    e = np.asarray(f.hist_edges, np.float64)
    q_top = list(f.quantile_edges)
    acts = []
    for w in f.examples:
        q = w.quantile or 0
        acts.append({"tokens": lab.decode(w.token_ids), "values": list(w.acts), "maxValue": w.max_act,
                     "maxValueTokenIndex": int(np.argmax(w.acts)) if w.acts else 0,
                     "minValue": min(w.acts) if w.acts else 0.0,
                     "binMax": q_top[q] if q < len(q_top) else None,
                     "binMin": q_top[q + 1] if q + 1 < len(q_top) else 0.0,
                     "dataIndex": w.row, "ai_start": w.start, "ai_quantile": w.quantile,
                     "ai_tokenIds": list(w.token_ids)})
    by_text: dict[tuple[str, str], list[Score]] = {}
    for s in f.scores:
        by_text.setdefault((s.explainer or "", s.explanation), []).append(s)
    expls = []
    for x in f.explanations:
        ss = by_text.pop((x.explainer, x.text or ""), [])
        expls.append({"description": x.text, "explanationModelName": x.model, "typeName": x.explainer,
                      "ai_failed": x.failed, "ai_error": x.error, "ai_sample": x.sample,
                      "scores": [_score(s) for s in ss]})
    for (explainer, text), ss in by_text.items():  # scored texts no explainer wrote (intervention's, ...)
        expls.append({"description": text, "explanationModelName": None, "typeName": explainer or ss[0].scorer,
                      "ai_failed": False, "ai_error": None, "ai_sample": 0, "ai_scored_only": True,
                      "scores": [_score(s) for s in ss]})
    return {"modelId": lab.cfg.model, "layer": _source_id(lab), "index": str(f.latent), "hookName": lab.cfg.hook,
            "maxActApprox": f.max_act, "frac_nonzero": f.firing_rate, "ai_count": f.count, "ai_mean_act": f.mean_act,
            "pos_str": [t for t, _ in f.promoted], "pos_values": [v for _, v in f.promoted],
            "neg_str": [t for t, _ in f.suppressed], "neg_values": [v for _, v in f.suppressed],
            "freq_hist_data_bar_heights": list(f.hist_counts),
            "freq_hist_data_bar_values": ((e[:-1] + e[1:]) / 2).tolist() if e.size else [],
            "ai_hist_edges": list(f.hist_edges), "ai_quantile_edges": q_top,
            "topkCosSimIndices": [k for k, _ in f.neighbours], "topkCosSimValues": [c for _, c in f.neighbours],
            "ai_matches": [list(m) for m in f.matches], "activations": acts, "explanations": expls}


def _score(s: Score) -> dict[str, Any]:
    return {"value": s.value, "explanationScoreTypeName": s.scorer, "explanationScoreModelName": None,
            "ai_metric": s.metric, "ai_control": s.control, "ai_control_name": s.control_name,
            "ai_explainer": s.explainer}


def write(lab: Lab, features: Sequence[Feature] | None = None, path: str | os.PathLike | None = None) -> Path:
    """Write the export (default ``<run>/export/features.jsonl``; features: the run's explained
    and scored latents)."""
    features = list(features) if features is not None else [lab.feature(j) for j in lab.latents()]
    path = Path(path) if path else lab.rundir.path("export") / "features.jsonl"
    return results.write(path, "features", [feature_record(f, lab) for f in features],
                         model=lab.cfg.model, sae=lab.cfg.sae, hook=lab.cfg.hook, source=_source_id(lab),
                         d_sae=lab.reader.d_sae, latents=[f.latent for f in features])


def load(path: str | os.PathLike) -> tuple[dict[str, Any], list[Feature]]:
    """Read an export back: (header, the lab's ``Feature`` records)."""
    header, rows = results.read(path, "features")
    return header, [feature_from(r) for r in rows]


def feature_from(r: dict[str, Any]) -> Feature:
    j = int(r["index"])
    expls, scores = [], []
    for x in r["explanations"]:
        if not x.get("ai_scored_only"):
            expls.append(Explanation(j, x["typeName"], x["description"], failed=x["ai_failed"], error=x["ai_error"],
                                     sample=x["ai_sample"], model=x["explanationModelName"]))
        for s in x["scores"]:
            scores.append(Score(s["explanationScoreTypeName"], s["ai_metric"], s["value"], s["ai_control"],
                                s["ai_control_name"], s["ai_explainer"], x["description"] or ""))
    wins = tuple(Window(latent=j, row=a["dataIndex"], start=a["ai_start"], token_ids=tuple(a["ai_tokenIds"]),
                        acts=tuple(a["values"]), max_act=a["maxValue"], quantile=a["ai_quantile"], kind="activating")
                 for a in r["activations"])
    return Feature(j, r["ai_count"], r["frac_nonzero"], r["maxActApprox"], r["ai_mean_act"], tuple(expls),
                   tuple(scores), tuple(r["ai_hist_edges"]), tuple(r["freq_hist_data_bar_heights"]),
                   tuple(r["ai_quantile_edges"]), tuple(zip(r["pos_str"], r["pos_values"])),
                   tuple(zip(r["neg_str"], r["neg_values"])), wins,
                   tuple(zip(r["topkCosSimIndices"], r["topkCosSimValues"])), tuple(tuple(m) for m in r["ai_matches"]))


__all__ = ["write", "load", "feature_record", "feature_from"]
