"""Views for the notebooks: plotly figures and ipywidgets browsers. Logic stays in the stages."""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from .records import window_text


def tokens_html(tokens: Sequence[str], acts: Sequence[float] | None = None, vmax: float | None = None,
                peak: int | None = None) -> str:
    """Tokens as inline HTML, each shaded by its activation (orange, alpha = act / vmax)."""
    vmax = vmax or (max(acts) if acts is not None and len(acts) else 1.0) or 1.0
    spans = []
    for i, tok in enumerate(tokens):
        a = 0.0 if acts is None else float(acts[i])
        alpha = min(max(a / vmax, 0.0), 1.0)
        border = "border-bottom:2px solid #c00;" if peak is not None and i == peak else ""
        title = f' title="{a:.2f}"' if acts is not None else ""
        text = html.escape(tok).replace("\n", "⏎").replace(" ", "&nbsp;") or "∅"
        spans.append(f'<span style="background:rgba(255,140,0,{alpha:.2f});{border}'
                     f'border-radius:2px;padding:0 1px;margin:0 1px;font-family:monospace"{title}>{text}</span>')
    return "".join(spans)


def firing_rate_histogram(stats, title: str = "Latent firing rates"):
    """Histogram of log10 firing rate over live latents, with dead latents counted in the title."""
    import plotly.graph_objects as go

    rate = stats.firing_rate[~stats.dead]
    fig = go.Figure(go.Histogram(x=np.log10(rate), nbinsx=60, marker_color="#3b75af"))
    fig.update_layout(title=f"{title} ({int(stats.dead.sum())} dead of {stats.dead.size})",
                      xaxis_title="log10(fraction of tokens on which the latent fires)",
                      yaxis_title="latents", bargap=0.02, height=360, template="plotly_white")
    return fig


def corpus_browser(tokens: np.ndarray, tokenizer):
    """A slider over packed rows; shows each row's tokens with their boundaries."""
    import ipywidgets as w

    # An HTML widget whose value is replaced (not an Output widget captured with `with`): the
    # latter hung papermill runs in this project (kernel idle, client waiting forever).
    out = w.HTML()
    row = w.IntSlider(value=0, min=0, max=len(tokens) - 1, description="row", continuous_update=False)

    def show(_=None):
        toks = [tokenizer.decode([int(t)]) for t in tokens[row.value]]
        out.value = tokens_html(toks, [0.25 * (i % 2) for i in range(len(toks))], vmax=1.0)

    row.observe(show, names="value")
    show()
    return view([row, out])


def latent_browser(reader, tokenizer, n_windows: int = 8, width: int = 32):
    """Pick a latent (most frequent first, or type an id) and read its top windows."""
    import ipywidgets as w

    from .examples import TokenDecoder

    decode = TokenDecoder(tokenizer)
    stats = reader.stats
    order = np.argsort(-stats.count, kind="stable")
    alive = order[stats.count[order] > 0]
    options = [(f"{j}  (fires on {stats.firing_rate[j]:.2%}, max {stats.max_act[j]:.1f})", int(j))
               for j in alive[:500]]
    # open on a latent a reader can learn from: the most frequent one that fires on <= 5% of tokens
    # (the most frequent overall often fires on most tokens and explains nothing)
    start = next((j for _, j in options if stats.firing_rate[j] <= 0.05), options[0][1] if options else 0)
    pick = w.Dropdown(options=options, value=start if options else None, description="latent",
                      layout=w.Layout(width="480px"))
    typed = w.BoundedIntText(value=start, min=0,
                             max=reader.d_sae - 1, description="or id")
    out = w.HTML()  # see corpus_browser: no Output widget

    def show(j: int) -> None:
        wins = reader.top_windows(j, n=n_windows, width=width)
        if not wins:
            out.value = f"<i>latent {j} never fires in this cache</i>"
            return
        head = (f"<b>latent {j}</b>: fires on {int(stats.count[j])} tokens "
                f"({stats.firing_rate[j]:.3%}), max {stats.max_act[j]:.2f}, "
                f"top-token share {stats.top_token_share[j]:.0%}")
        rows = [f"<div style='margin:4px 0'><code>{wn.max_act:6.2f}</code> "
                f"{tokens_html(decode(wn.token_ids), wn.acts, vmax=float(stats.max_act[j]), peak=wn.peak)}</div>"
                for wn in wins]
        out.value = head + "".join(rows)

    pick.observe(lambda ch: (typed.__setattr__("value", ch["new"])), names="value")
    typed.observe(lambda ch: show(int(ch["new"])), names="value")
    show(int(typed.value))
    return view([w.HBox([pick, typed]), out])


def quantile_figure(table, lex=None, n_quantiles: int = 10, title: str | None = None):
    """A latent's activating windows by rank (max activation, coloured by quantile bin), with the
    explanation set and the test set marked."""
    import plotly.graph_objects as go

    rank = np.arange(len(table))
    q = table.quantiles(n_quantiles)
    fig = go.Figure(go.Scatter(x=rank, y=table.max_act, mode="markers", name="all windows",
                               marker=dict(color=q, colorscale="Viridis", size=5, opacity=0.5,
                                           colorbar=dict(title="quantile"))))
    if lex is not None:
        key = {(int(r), int(s)): i for i, (r, s) in enumerate(zip(table.row, table.start))}
        for name, exs, symbol, color in (("explanation set", lex.train, "x", "#c00"),
                                         ("test set", lex.test_activating, "circle-open", "#000")):
            ranks = [key[(e.row, e.start)] for e in exs if (e.row, e.start) in key]
            fig.add_scatter(x=ranks, y=table.max_act[ranks], mode="markers", name=name,
                            marker=dict(symbol=symbol, size=9, color=color))
    fig.update_layout(title=title or f"latent {table.latent}: {len(table)} activating windows by rank",
                      xaxis_title="rank (0 = strongest window)", yaxis_title="window max activation",
                      height=360, template="plotly_white", legend=dict(orientation="h", y=-0.25))
    return fig


def examples_html(examples, decode, vmax: float | None = None, title: str = "") -> str:
    """Example windows as shaded token lines (see tokens_html), each with its max and quantile."""
    rows = []
    for e in examples:
        tag = f"q{e.quantile}" if e.quantile is not None else (
            f"n{e.neighbour}" if e.neighbour is not None else "rnd")
        rows.append(f"<div style='margin:2px 0'><code>{e.max_act:5.2f} {tag:>4}</code> "
                    f"{tokens_html(decode(e.token_ids), e.acts, vmax=vmax, peak=e.peak if e.max_act > 0 else None)}</div>")
    head = f"<div style='margin-top:6px'><b>{html.escape(title)}</b></div>" if title else ""
    return head + ("".join(rows) or "<i>(none)</i>")


def explanations_html(explanations) -> str:
    """A table: explainer, sample, explanation (or the failure and its reason)."""
    cells = []
    for x in explanations:
        text = (f"<span style='color:#b00'>FAILED: {html.escape(x.error or '')}</span>" if x.failed
                else html.escape(x.text or ""))
        sample = f"{x.sample + 1}/{x.n_samples}{' (random pick)' if x.random_pick else ''}" \
            if x.n_samples > 1 else ""
        cells.append(f"<tr><td><code>{html.escape(x.explainer)}</code> {sample}</td>"
                     f"<td style='text-align:left'>{text}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def explanation_browser(latent_examples, explanations, decode, n_show: int = 8):
    """Pick a latent: all its explanations side by side, then its explanation set, test examples,
    random and hard negatives (shaded by the latent's activation). Content is an HTML widget (no
    Output-widget capture), so it also renders when the notebook runs headless under papermill."""
    import ipywidgets as w

    by: dict[int, list] = {}
    for x in explanations:
        by.setdefault(x.latent, []).append(x)
    lexs = {lx.latent: lx for lx in latent_examples}
    options = [(f"{j}" + (f"  (skipped: {lx.skipped_reason})" if lx.skipped else ""), j)
               for j, lx in lexs.items()]
    pick = w.Dropdown(options=options, description="latent", layout=w.Layout(width="520px"))
    body = w.HTML()

    def render(lx) -> str:
        if lx.skipped:
            return f"<i>latent {lx.latent} was skipped: {html.escape(lx.skipped_reason)}</i>"
        return "".join([
            f"<b>latent {lx.latent}</b>: {lx.n_windows} activating windows, max {lx.max_act:.2f}, "
            f"neighbours {list(lx.neighbours)}", explanations_html(by.get(lx.latent, [])),
            examples_html(lx.train, decode, lx.max_act, "explanation set (q = quantile, 0 = top)"),
            examples_html(lx.test_activating[:n_show], decode, lx.max_act, "test: activating"),
            examples_html(lx.test_negative[:n_show], decode, lx.max_act, "test: random negatives"),
            examples_html(lx.test_hard_negative[:n_show], decode, lx.max_act,
                          "test: hard negatives (n = neighbour latent that fires there)")])

    def show(_=None) -> None:
        body.value = render(lexs[pick.value])

    pick.observe(show, names="value")
    show()
    return view([pick, body])


def scored_examples_html(examples, texts, scores, auroc: float, title: str = "") -> str:
    """Examples (``records.Window``, with their ``texts``) sorted by score (highest first):
    score, label (green = activating, grey = not, with its quantile) and text; AUROC in the heading."""
    order = sorted(range(len(examples)), key=lambda i: -np.inf if scores[i] is None else -scores[i])
    rows = []
    for i in order:
        e, s = examples[i], scores[i]
        tag = f"act q{e.quantile}" if e.label else "neg"
        color = "#2a7a2a" if e.label else "#888"
        rows.append(f"<tr><td><code>{'—' if s is None else f'{s:+.3f}'}</code></td>"
                    f"<td style='color:{color}'><b>{tag}</b></td>"
                    f"<td style='text-align:left;font-family:monospace'>{html.escape(texts[i])}</td></tr>")
    head = f"<b>{html.escape(title)}</b> AUROC <b>{auroc:.3f}</b>" if title else f"AUROC <b>{auroc:.3f}</b>"
    return f"<div>{head}</div><table>{''.join(rows)}</table>"


def score_playground(examples, explanations, score_fn, *, tokenizer, live: bool = True, reference=None):
    """Pick a latent, type an explanation, see its AUROC and every example's score.

    ``examples``: latent -> ``records.Window``s (shown as text by ``tokenizer``); ``explanations``: latent -> the run's explanation (the
    starting text); ``score_fn(latent, text) -> (auroc, scores aligned with examples[latent])``;
    ``live``: rescore when the text changes (fast scorers), else on a button (slow ones);
    ``reference``: latent -> (real AUROC, shuffled AUROC) from the chapter's run, shown above."""
    import ipywidgets as w

    pick = w.Dropdown(options=sorted(examples), description="latent")
    text = w.Text(description="explanation", layout=w.Layout(width="720px"), continuous_update=False)
    button = w.Button(description="score it", button_style="primary")
    body = w.HTML()  # an HTML widget whose value is replaced: no Output capture (papermill)

    def show(_=None) -> None:
        lat = pick.value
        ref = (reference or {}).get(lat)
        head = (f"<div>this run: real explanation AUROC {ref[0]:.3f}, shuffled control {ref[1]:.3f}</div>"
                if ref else "")
        if not text.value.strip():
            body.value = head + "<i>type an explanation</i>"
            return
        body.value = head + "<i>scoring ...</i>"
        try:
            a, scores = score_fn(lat, text.value.strip())
        except Exception as err:  # shown in the widget: a playground must not die on a typo
            body.value = head + f"<span style='color:#b00'>{html.escape(repr(err))}</span>"
            return
        exs = list(examples[lat])
        body.value = head + scored_examples_html(exs, [window_text(e, tokenizer) for e in exs],
                                                 list(scores), a, f"latent {lat}, your explanation:")

    quiet = [False]  # True while reset() writes the text, so show() runs once, not twice

    def on_text(_=None) -> None:
        if live and not quiet[0]:
            show()

    def reset(_=None) -> None:
        quiet[0] = True
        text.value = explanations.get(pick.value, "")
        quiet[0] = False
        show()

    pick.observe(reset, names="value")
    text.observe(on_text, names="value")
    button.on_click(show)
    reset()
    return view([pick, w.HBox([text, button]), body])


def steering_playground(subject, sae, hook: str, calibrated, reader, *, n_prompts: int = 3,
                        max_len: int | None = 48, n_tokens: int = 8, seed: int = 0):
    """Pick a latent and a multiplier of its calibrated strength; **generate** shows the same
    prompts continued clean and intervened (``scorers.intervention``), with the KL it caused.
    ``calibrated``: latent -> its intervention ``ScorerResult`` (``details["strength"]`` is the unit)."""
    import ipywidgets as w

    from .scorers import intervention as iv

    pick = w.Dropdown(options=sorted(calibrated), description="latent")
    mult = w.FloatSlider(value=1.0, min=-3.0, max=5.0, step=0.25, description="x strength")
    button = w.Button(description="generate", button_style="primary")
    body = w.HTML()

    def show(_=None) -> None:
        j = pick.value
        unit = calibrated[j].details["strength"]
        strength = mult.value * unit
        body.value = "<i>generating ...</i>"
        try:
            batch = iv.PromptBatch(subject, iv.prompts_from_cache(reader, j, n_prompts, max_len=max_len, seed=seed))
            kl = batch.mean_kl(batch.logprobs(sae, hook, j, strength))
            clean = iv.generate(batch, n_tokens, seed=seed)
            steered = iv.generate(batch, n_tokens, seed=seed, sae=sae, hook=hook, latent=j, strength=strength)
        except Exception as err:  # shown in the widget: a playground must not die on a bad setting
            body.value = f"<span style='color:#b00'>{html.escape(repr(err))}</span>"
            return
        dec = subject.tokenizer.decode
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(dec(p.tolist(), skip_special_tokens=True)[-60:])}</td>"
            f"<td style='text-align:left;color:#666'>{html.escape(dec(c.tolist()))}</td>"
            f"<td style='text-align:left;color:#3b75af'>{html.escape(dec(s.tolist()))}</td></tr>"
            for p, c, s in zip(batch.prompts, clean, steered))
        body.value = (f"<div>latent {j}: strength {strength:+.2f} (x{mult.value:g} of the calibrated "
                      f"{unit:.2f}), next-token KL {kl:.3f}</div><table><tr><th>prompt (end)"
                      f"</th><th>clean</th><th>intervened</th></tr>{rows}</table>")

    button.on_click(show)
    show()
    return view([w.HBox([pick, mult, button]), body])


def selection_playground(sel, scorer, *, text: str = ""):
    """Write an explanation for a latent: it joins that latent's candidates, is scored on both
    splits and ranked among them (chapter 10). Widgets only, so it renders headless too."""
    import ipywidgets as w

    from .selection import rank_of

    pick = w.Dropdown(options=sorted(sel.candidates), description="latent")
    box = w.Text(value=text, placeholder="your explanation", description="yours",
                 layout=w.Layout(width="70%"))
    go = w.Button(description="score it")
    out = w.HTML()

    def table(j: int, mine: dict | None) -> str:
        rows = [(c.source, c.text, sel.on_selection[j][i], sel.on_heldout[j][i], i == sel.kept[j])
                for i, c in enumerate(sel.candidates[j])]
        if mine:
            rows.append(("yours", mine["text"], mine["selection"], mine["heldout"], False))
        rows.sort(key=lambda r: -r[2])
        body = "".join(f"<tr style='{'font-weight:bold' if src == 'yours' else ''}'><td>{html.escape(src)}"
                       f"{' (kept)' if kept else ''}</td><td>{html.escape(t[:90])}</td><td>{s:.3f}</td>"
                       f"<td>{h:.3f}</td></tr>" for src, t, s, h, kept in rows)
        head = ("" if not mine else f"<p>Yours ranks {mine['selection_rank']} of {mine['of']} on the selection split "
                f"and {mine['heldout_rank']} of {mine['of']} on the held-out split.</p>")
        return (f"{head}<table><tr><th>candidate</th><th>text</th><th>selection {sel.metric}</th>"
                f"<th>held-out {sel.metric}</th></tr>{body}</table>")

    def show(_=None) -> None:
        j = pick.value
        mine = rank_of(sel, scorer, j, box.value.strip()) if box.value.strip() else None
        out.value = table(j, mine)

    go.on_click(show)
    pick.observe(show, "value")
    show()
    return view([w.HBox([pick, go]), box, out])


# -- static life: every view also carries an HTML snapshot of its current state ----------------
_PLOTLY_JS_SENT = [False]


def plotly_offline() -> None:
    """Figures carry their plotly.js inline (no CDN): JupyterLab draws the plotly mimetype, and
    an executed notebook exported to HTML draws the same figure offline."""
    import plotly.io as pio

    pio.renderers.default = "plotly_mimetype+notebook"


def plotly_js_once() -> str:
    """A <script> with plotly.js the first time a kernel asks, then "" (snapshots share it)."""
    if _PLOTLY_JS_SENT[0]:
        return ""
    from plotly.offline import get_plotlyjs

    _PLOTLY_JS_SENT[0] = True
    return f'<script type="text/javascript">{get_plotlyjs()}</script>'


def _output_html(output: dict) -> str:
    data = output.get("data", {})
    if "application/vnd.plotly.v1+json" in data:
        import plotly.io as pio

        return pio.to_html(data["application/vnd.plotly.v1+json"], full_html=False, include_plotlyjs=False)
    if "text/html" in data:
        return data["text/html"]
    if output.get("output_type") == "stream":
        return f"<pre>{html.escape(output.get('text', ''))}</pre>"
    return f"<pre>{html.escape(str(data.get('text/plain', '')))}</pre>"


def static_html(widget) -> str:
    """The widget tree as plain HTML showing its current state: HTML widgets as they are, controls
    as "description: value", Output widgets' figures drawn with plotly.js, buttons left out."""
    import ipywidgets as w

    if isinstance(widget, (w.HTML, w.HTMLMath)):
        return widget.value
    if isinstance(widget, w.Label):
        return html.escape(widget.value)
    if isinstance(widget, w.Button):
        return ""
    if isinstance(widget, w.Output):
        return "".join(_output_html(o) for o in widget.outputs)
    if isinstance(widget, (w.Accordion, w.Tab)):
        return "".join(f"<div><b>{html.escape(widget.get_title(i) or '')}</b>{static_html(c)}</div>"
                       for i, c in enumerate(widget.children))
    if isinstance(widget, w.Box):
        row = isinstance(widget, w.HBox)
        style = "display:flex;gap:12px;flex-wrap:wrap;align-items:baseline" if row else ""
        return f"<div style='{style}'>" + "".join(static_html(c) for c in widget.children) + "</div>"
    if isinstance(widget, w.ValueWidget):
        value = getattr(widget, "label", None) if isinstance(widget, (w.Dropdown, w.Select)) else widget.value
        if value in (None, ""):
            return ""
        desc = html.escape(getattr(widget, "description", "") or "")
        return f"<span><b>{desc}</b> {html.escape(str(value))}</span>"
    return ""


_VIEW: list = []


def view(children, *, classes: Sequence[str] = ()):
    """A VBox that also carries ``static_html`` of itself as text/html: a live JupyterLab draws the
    widget; an executed notebook (``autointerp.run`` keeps the snapshot) and its HTML export show
    the state it had when its cell last updated it."""
    if not _VIEW:
        import ipywidgets as w

        class View(w.VBox):
            def _repr_mimebundle_(self, **kwargs):
                bundle = super()._repr_mimebundle_(**kwargs)
                data = bundle[0] if isinstance(bundle, tuple) else bundle
                body = static_html(self)
                if "Plotly.newPlot" in body and not hasattr(self, "_js"):
                    self._js = plotly_js_once()  # kept: a display update must not drop it
                data["text/html"] = f"{getattr(self, '_js', '')}<div class='ai-static'>{body}</div>"
                return bundle

        _VIEW.append(View)
    box = _VIEW[0](list(children))
    for c in classes:
        box.add_class(c)
    return box


def figure_output(fig=None):
    """An Output widget holding one plotly figure, set without capturing (``with out:`` hung
    papermill runs here); ``set_figure(out, fig)`` replaces it."""
    import ipywidgets as w

    out = w.Output()
    if fig is not None:
        set_figure(out, fig)
    return out


def set_figure(out, fig) -> None:
    """Replace the figure: the plotly mimetype (JupyterLab's plotly renderer draws it)."""
    import json

    out.outputs = ({"output_type": "display_data", "metadata": {},
                    "data": {"application/vnd.plotly.v1+json": {**json.loads(fig.to_json()), "config": {}},
                             "text/plain": f"<plotly figure: {fig.layout.title.text or ''}>"}},)
