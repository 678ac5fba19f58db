"""The lab's parts that need no run: static snapshots of views, the runner keeping them, and the
Neuronpedia-style export's record round trip. (The lab over a real run: test_notebooks check_12
and the browser test.)"""
from __future__ import annotations

from types import SimpleNamespace

import nbformat
import plotly.graph_objects as go

from autointerp import export, run, widgets
from autointerp.lab import Feature, Score
from autointerp.records import Explanation, Window


def test_a_view_carries_a_snapshot_of_its_current_state():
    import ipywidgets as w

    pick = w.Dropdown(options=[("latent 3", 3), ("latent 7", 7)], value=7, description="latent")
    fig = widgets.figure_output(go.Figure(go.Bar(x=[1, 2], y=[3, 4])))
    box = widgets.view([w.HBox([pick, w.Button(description="go")]), w.HTML("<i class='x'>body</i>"), fig],
                       classes=["ai-test"])
    bundle = box._repr_mimebundle_()
    assert run.WIDGET_VIEW in bundle and "ai-test" in box._dom_classes
    snap = bundle["text/html"]
    assert "latent 7" in snap and "<i class='x'>body</i>" in snap and "Plotly.newPlot" in snap
    assert "go</button>" not in snap  # buttons do nothing in a snapshot
    pick.value = 3
    assert "latent 3" in box._repr_mimebundle_()["text/html"]  # the state now, not at creation


def test_the_runner_keeps_snapshots_and_drops_dead_widgets(tmp_path):
    nb = nbformat.v4.new_notebook()
    view_out = nbformat.v4.new_output("display_data", data={run.WIDGET_VIEW: {"model_id": "a"},
                                                             "text/html": "<div class='ai-static'>x</div>",
                                                             "text/plain": "VBox()"})
    bar_out = nbformat.v4.new_output("display_data", data={run.WIDGET_VIEW: {"model_id": "b"}, "text/plain": "50%"})
    nb.cells = [nbformat.v4.new_code_cell("x", outputs=[view_out, bar_out])]
    nb.metadata["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    assert run.keep_snapshots(path) == 1
    back = nbformat.read(path, as_version=4)
    first, second = back.cells[0].outputs
    assert set(first.data) == {"text/html", "text/plain"} and run.WIDGET_VIEW in second.data
    assert "widgets" not in back.metadata


def _feature() -> Feature:
    wins = (Window(latent=5, row=2, start=7, token_ids=(11, 12, 13), acts=(0.0, 2.5, 1.0), max_act=2.5,
                   quantile=0, kind="activating"),
            Window(latent=5, row=9, start=0, token_ids=(14, 15, 16), acts=(0.5, 0.0, 0.0), max_act=0.5,
                   quantile=1, kind="activating"))
    expl = (Explanation(5, "top_tokens", 'the word "b"'), Explanation(5, "llm", None, failed=True, error="no answer"))
    scores = (Score("embedding", "auroc", 0.8, 0.55, "shuffled", "top_tokens", 'the word "b"'),
              Score("intervention", "mean_score", 1.2, 0.1, "shuffled", None, "b, c"))
    return Feature(5, 40, 0.01, 2.5, 1.1, expl, scores, (0.5, 1.5, 2.5), (30, 10), (2.5, 0.5),
                   (("b", 0.9),), (("z", -0.7),), wins, ((8, 0.6), (2, 0.4)), (("twin", 3, 0.8, "matched"),))


def test_export_records_use_neuronpedia_names_and_read_back(tmp_path):
    f = _feature()
    lab = SimpleNamespace(cfg=SimpleNamespace(model="embedded", hook="model.layers.8", sae="train"),
                          decode=lambda ids: [f"t{i}" for i in ids])
    rec = export.feature_record(f, lab)
    for name in ("modelId", "layer", "index", "maxActApprox", "frac_nonzero", "pos_str", "neg_values",
                 "freq_hist_data_bar_heights", "freq_hist_data_bar_values", "topkCosSimIndices", "activations",
                 "explanations"):
        assert name in rec, name
    assert rec["layer"] == "8-res-autointerp" and rec["index"] == "5"
    assert len(rec["freq_hist_data_bar_values"]) == len(rec["freq_hist_data_bar_heights"])  # parallel arrays
    assert rec["activations"][0]["tokens"] == ["t11", "t12", "t13"] and rec["activations"][0]["maxValueTokenIndex"] == 1
    assert {e["typeName"] for e in rec["explanations"]} == {"top_tokens", "llm", "intervention"}
    back = export.feature_from(rec)
    assert back.examples == f.examples and back.neighbours == f.neighbours and back.matches == f.matches
    assert sorted(back.scores, key=lambda s: s.scorer) == sorted(f.scores, key=lambda s: s.scorer)
    assert [(x.explainer, x.text, x.failed, x.error) for x in back.explanations] == \
        [(x.explainer, x.text, x.failed, x.error) for x in f.explanations]
    assert (back.hist_edges, back.hist_counts, back.promoted, back.suppressed) == \
        (f.hist_edges, f.hist_counts, f.promoted, f.suppressed)
