"""The lab's views (chapter 12): a feature dashboard over a run directory, "your own text" and
steering from the dashboard. Facts come from ``lab``; the HTML pieces here are shared with the
static report (``report``). Every view is a ``widgets.view``: live in JupyterLab, and a snapshot of
its current state in an executed notebook and its HTML export.

    dash = ai.dashboard(run_dir)     # or ai.labview.Dashboard(lab)
    dash.show(17); dash.next_interesting(); dash.search("file paths"); dash.steer(target_kl=0.5)
"""
from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from . import lab as lab_mod
from .widgets import figure_output, set_figure, tokens_html, view

CONTROL_WORD = {"shuffled": "shuffled explanation", "mixed": "mixed set"}


# -- HTML pieces (also the report's) -----------------------------------------------------------
def header_html(f: lab_mod.Feature) -> str:
    expl = f.explanation
    return (f"<h3 style='margin:4px 0'>latent {f.latent}</h3>"
            f"<div>fires on <b>{f.count}</b> tokens ({f.firing_rate:.3%}), max activation "
            f"<b>{f.max_act:.2f}</b>, mean when firing {f.mean_act:.2f}</div>"
            f"<div style='margin:4px 0'>{html.escape(expl) if expl else '<i>not explained in this run</i>'}</div>")


def explanations_table(f: lab_mod.Feature) -> str:
    if not f.explanations:
        return ""
    rows = "".join(
        f"<tr><td><code>{html.escape(x.explainer)}</code></td><td style='text-align:left'>"
        + (f"<span style='color:#b00'>failed: {html.escape(x.error or '')}</span>" if x.failed
           else html.escape(x.text or "")) + "</td></tr>" for x in f.explanations)
    return f"<details><summary>all {len(f.explanations)} explanations</summary><table>{rows}</table></details>"


def scores_html(f: lab_mod.Feature) -> str:
    if not f.scores:
        return "<div><i>no scores yet (chapters 03-07 score the explained latents)</i></div>"
    rows = []
    for s in f.scores:
        ctrl = "—" if s.control is None else f"{s.control:.3f} ({CONTROL_WORD.get(s.control_name, s.control_name)})"
        gap = "" if s.control is None else f"{s.gap:+.3f}"
        color = "#2a7a2a" if s.control is not None and s.gap > 0 else "#888"
        rows.append(f"<tr><td>{html.escape(s.scorer)}</td><td><code>{html.escape(s.explainer or '')}</code></td>"
                    f"<td>{s.metric}</td><td><b>{s.value:.3f}</b></td><td>{ctrl}</td>"
                    f"<td style='color:{color}'>{gap}</td></tr>")
    return ("<table class='ai-scores'><tr><th>scorer</th><th>explainer</th><th>metric</th><th>score</th>"
            f"<th>control</th><th>gap</th></tr>{''.join(rows)}</table>")


def logit_html(f: lab_mod.Feature) -> str:
    def chips(pairs, color):
        return " ".join(f"<span style='background:{color};padding:0 3px;margin:1px;border-radius:2px;"
                        f"font-family:monospace' title='{v:+.3f}'>{html.escape(t)}</span>" for t, v in pairs)
    return (f"<div><b>logit lens</b> promotes {chips(f.promoted, '#d4edda')}</div>"
            f"<div>suppresses {chips(f.suppressed, '#f8d7da')}</div>")


def examples_html(f: lab_mod.Feature, decode) -> str:
    if not f.examples:
        return f"<div class='ai-examples' data-latent='{f.latent}'><i>latent {f.latent} never fires in this cache</i></div>"
    rows = [f"<div style='margin:2px 0'><code>q{w.quantile} {w.max_act:6.2f}</code> "
            f"{tokens_html(decode(w.token_ids), w.acts, vmax=f.max_act, peak=w.peak)}</div>" for w in f.examples]
    return (f"<div class='ai-examples' data-latent='{f.latent}'><b>examples by quantile</b> (q0 = strongest; "
            f"hover a token for its activation){''.join(rows)}</div>")


def related_html(f: lab_mod.Feature) -> str:
    nb = ", ".join(f"{k} ({c:.2f})" for k, c in f.neighbours)
    out = f"<div><b>nearest latents</b> by decoder cosine: {nb or '—'}</div>"
    if f.matches:
        ms = ", ".join(f"{name} {k} ({c:.2f}{'' if how == 'matched' else ', nearest'})" for name, k, c, how in f.matches)
        out += f"<div><b>in the other SAEs</b> (Hungarian match, or nearest where it was left out): {ms}</div>"
    return out


def histogram_figure(f: lab_mod.Feature):
    import plotly.graph_objects as go

    e = np.asarray(f.hist_edges)
    fig = go.Figure(go.Bar(x=(e[:-1] + e[1:]) / 2 if e.size else [], y=list(f.hist_counts),
                           width=np.diff(e) if e.size else None, marker_color="#3b75af", name="tokens"))
    for i, q in enumerate(f.quantile_edges):
        fig.add_vline(x=q, line=dict(color="#c00", width=1, dash="dot"), annotation_text=f"q{i}",
                      annotation_font_size=9)
    fig.update_layout(title=f"latent {f.latent}: activation on the {f.count} tokens where it fires",
                      xaxis_title="activation (dotted: top of each example quantile)",
                      yaxis=dict(title="tokens", type="log"), height=300, width=640,
                      template="plotly_white", margin=dict(t=40, b=40, l=50, r=10), showlegend=False)
    return fig


def steering_html(s: lab_mod.Steering) -> str:
    how = (f"calibrated to KL {s.target_kl:g}" if s.target_kl is not None else "strength set by hand")
    rows = "".join(f"<tr><td style='text-align:left'>…{html.escape(p[-60:])}</td>"
                   f"<td style='text-align:left;color:#666'>{html.escape(c)}</td>"
                   f"<td style='text-align:left;color:#3b75af'>{html.escape(t)}</td></tr>"
                   for p, c, t in zip(s.prompts, s.clean, s.steered))
    return (f"<div class='ai-steering'>latent {s.latent}: strength {s.strength:+.2f} ({how}), next-token "
            f"KL(clean || steered) <b>{s.kl:.3f}</b> nats</div><table><tr><th>prompt (end)</th>"
            f"<th>clean</th><th>steered</th></tr>{rows}</table>")


def own_text_html(o: lab_mod.OwnText, latent: int | None, explain=lambda j: "") -> str:
    """The text shaded by one latent, then a token-by-token table of the strongest latents."""
    if not o.acts:
        return "<i>no latent fires on this text</i>"
    j = latent if latent in o.acts else next(iter(o.acts))
    shaded = tokens_html(o.tokens, o.acts[j])
    head = "".join(f"<th style='font-family:monospace'>{html.escape(t)}</th>" for t in o.tokens)
    vmax = max(max(a) for a in o.acts.values()) or 1.0
    body = "".join(
        f"<tr><td><b>{k}</b></td>" + "".join(
            f"<td style='background:rgba(255,140,0,{min(a / vmax, 1):.2f})' title='{a:.2f}'>{a:.1f}</td>"
            if a > 0 else "<td></td>" for a in acts) + f"<td style='text-align:left'>{html.escape(explain(k))}</td></tr>"
        for k, acts in list(o.acts.items())[:10])
    return (f"<div class='ai-own-text'><b>latent {j}</b> on your text: {shaded}</div>"
            f"<table style='font-size:11px'><tr><th>latent</th>{head}<th>explanation</th></tr>{body}</table>")


# -- the views ---------------------------------------------------------------------------------
class Dashboard:
    """A latent's page: header, scores with controls, histogram, logit lens, examples by quantile,
    nearest and matched latents; navigation by id, by search over explanations and "next
    interesting"; steering. ``show``, ``search``, ``next_interesting`` and ``steer`` drive it
    from code (and update the notebook's snapshot of it)."""

    def __init__(self, lab: lab_mod.Lab, latent: int | None = None, *, steer_prompts: int = 3,
                 steer_tokens: int = 8) -> None:
        import ipywidgets as w

        self.lab, self.steer_prompts, self.steer_tokens = lab, steer_prompts, steer_tokens
        self._queue = [j for j, _ in lab.interesting()]
        known = lab.latents()
        start = latent if latent is not None else (self._queue[0] if self._queue else (known[0] if known else 0))
        self.latent_id = w.BoundedIntText(value=int(start), min=0, max=lab.reader.d_sae - 1, description="latent")
        self.latent_id.add_class("ai-latent-id")
        self.pick = w.Dropdown(options=[("(the run's explained latents)", -1)] + [
            (f"{j}: {lab.explanation(j)}"[:70], j)
            for j in known], value=-1, layout=w.Layout(width="360px"))
        self.query = w.Text(placeholder="search explanations (MiniLM)", continuous_update=False,
                            layout=w.Layout(width="260px"))
        self.query.add_class("ai-search")
        self.next_button = w.Button(description="next interesting", tooltip="largest score gap or scorer disagreement")
        self.found = w.HTML()
        self.header, self.body, self.steer_out = w.HTML(), w.HTML(), w.HTML()
        self.header.add_class("ai-header")
        self.figure = figure_output()
        self.kl = w.FloatText(value=0.5, description="target KL", layout=w.Layout(width="160px"))
        self.strength = w.FloatText(value=0.0, description="or strength", layout=w.Layout(width="170px"),
                                    tooltip="0: calibrate to the target KL instead")
        self.steer_button = w.Button(description="steer", button_style="primary")
        self.box = view([w.HBox([self.latent_id, self.pick, self.next_button]), w.HBox([self.query, self.found]),
                         self.header, self.figure, self.body,
                         w.HTML("<b>Steering</b>: add to this latent at the last prompt token (chapter 07)"),
                         w.HBox([self.kl, self.strength, self.steer_button]), self.steer_out],
                        classes=["ai-dashboard"])
        self._handle = None
        self.latent_id.observe(lambda ch: self._render(int(ch["new"])), names="value")
        self.pick.observe(lambda ch: ch["new"] >= 0 and setattr(self.latent_id, "value", ch["new"]), names="value")
        self.query.observe(lambda ch: self._search(ch["new"]), names="value")
        self.next_button.on_click(lambda _: self._next())
        self.steer_button.on_click(lambda _: self._steer())
        self._render(int(start))

    # rendering --------------------------------------------------------------------------------
    def _render(self, j: int) -> None:
        try:
            f = self.lab.feature(j)
        except Exception as err:  # a view must not die on a bad id: say what is wrong
            self.header.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        self.feature = f
        self.header.value = header_html(f) + scores_html(f) + explanations_table(f)
        set_figure(self.figure, histogram_figure(f))
        self.body.value = logit_html(f) + examples_html(f, self.lab.decode) + related_html(f)
        self.steer_out.value = ""

    def _search(self, query: str) -> None:
        hits = self.lab.search(query) if query.strip() else []
        self.found.value = ("" if not query.strip() else "no explanation in this run" if not hits else
                            "best: " + "; ".join(f"<b>{j}</b> ({s:.2f}) {html.escape(t[:50])}" for j, s, t in hits[:3]))
        if hits:
            self.latent_id.value = hits[0][0]

    def _next(self) -> str:
        if not self._queue:
            self.found.value = "<i>no scored latents yet: run chapters 03-07</i>"
            return ""
        cur = int(self.latent_id.value)
        nxt = self._queue[(self._queue.index(cur) + 1) % len(self._queue)] if cur in self._queue else self._queue[0]
        why = dict(self.lab.interesting())[nxt]
        self.found.value = f"next interesting: <b>{nxt}</b>, {html.escape(why)}"
        self.latent_id.value = nxt
        return why

    def _steer(self) -> None:
        self.steer_out.value = "<i>steering ...</i>"
        try:
            s = self.lab.steer(int(self.latent_id.value), strength=self.strength.value or None,
                               target_kl=self.kl.value if not self.strength.value else None,
                               n_prompts=self.steer_prompts, n_tokens=self.steer_tokens)
        except Exception as err:  # shown in the view: a playground must not die on a setting
            self.steer_out.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        self.steering = s
        self.steer_out.value = steering_html(s)

    # driving it from code ---------------------------------------------------------------------
    def _ipython_display_(self) -> None:
        from IPython.display import display

        self._handle = display(self.box, display_id=True)

    def _update(self) -> Dashboard:
        """Under the runner (no live frontend), redraw this view's output so that the executed
        notebook keeps its final state. A live JupyterLab already shows it; re-creating the view
        there would orphan its plotly figure."""
        import os

        from .run import RECORDING

        if self._handle is not None and os.environ.get(RECORDING) == "1":
            self._handle.update(self.box)
        return self

    def show(self, latent: int) -> Dashboard:
        self.latent_id.value = int(latent)
        return self._update()

    def search(self, query: str) -> Dashboard:
        self.query.value = query
        return self._update()

    def next_interesting(self) -> Dashboard:
        self._next()
        return self._update()

    def steer(self, *, target_kl: float | None = 0.5, strength: float | None = None) -> Dashboard:
        self.kl.value, self.strength.value = float(target_kl or 0.0), float(strength or 0.0)
        self._steer()
        return self._update()


def dashboard(source, latent: int | None = None, **kwargs) -> Dashboard:
    """The feature dashboard over a run directory (a path) or an open ``lab.Lab``."""
    lab = source if isinstance(source, lab_mod.Lab) else lab_mod.open(Path(source))
    return Dashboard(lab, latent, **kwargs)


def own_text(lab: lab_mod.Lab, text: str = "", dash: Dashboard | None = None):
    """Type text, see which latents fire on it token by token; "open" shows one in ``dash``."""
    import ipywidgets as w

    box = w.Textarea(value=text, placeholder="type any text", layout=w.Layout(width="640px", height="60px"))
    box.add_class("ai-own-input")
    go = w.Button(description="which latents fire?", button_style="primary")
    pick = w.Dropdown(description="latent", layout=w.Layout(width="420px"))
    open_button = w.Button(description="open in dashboard", disabled=dash is None)
    out = w.HTML()
    state: dict = {}

    def run(_=None) -> None:
        try:
            state["o"] = lab.fire_on(box.value)
        except Exception as err:  # shown in the view
            out.value = f"<span style='color:#b00'>{html.escape(str(err))}</span>"
            return
        o = state["o"]
        pick.options = [(f"{j} (max {m:.1f}) {lab.explanation(j)[:40]}", j) for j, m in o.top(20)]
        render()

    def render(_=None) -> None:
        if "o" in state:
            out.value = own_text_html(state["o"], pick.value, lab.explanation)

    go.on_click(run)
    pick.observe(render, names="value")
    open_button.on_click(lambda _: dash is not None and pick.value is not None and dash.latent_id.__setattr__("value", pick.value))
    if text.strip():
        run()
    return view([box, w.HBox([go, pick, open_button]), out], classes=["ai-own-text-view"])


__all__ = ["Dashboard", "dashboard", "own_text", "header_html", "scores_html", "logit_html", "examples_html",
           "related_html", "histogram_figure", "steering_html", "own_text_html"]
