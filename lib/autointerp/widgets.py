"""Views for the notebooks: plotly figures and ipywidgets browsers. Logic stays in the stages."""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np


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
    from IPython.display import HTML, display

    out = w.Output()
    row = w.IntSlider(value=0, min=0, max=len(tokens) - 1, description="row", continuous_update=False)

    def show(_=None):
        out.clear_output(wait=True)
        with out:
            toks = [tokenizer.decode([int(t)]) for t in tokens[row.value]]
            display(HTML(tokens_html(toks, [0.25 * (i % 2) for i in range(len(toks))], vmax=1.0)))

    row.observe(show, names="value")
    show()
    return w.VBox([row, out])


def latent_browser(reader, tokenizer, n_windows: int = 8, width: int = 32):
    """Pick a latent (most frequent first, or type an id) and read its top windows."""
    import ipywidgets as w
    from IPython.display import HTML, display

    stats = reader.stats
    order = np.argsort(-stats.count, kind="stable")
    alive = order[stats.count[order] > 0]
    options = [(f"{j}  (fires on {stats.firing_rate[j]:.2%}, max {stats.max_act[j]:.1f})", int(j))
               for j in alive[:500]]
    pick = w.Dropdown(options=options, description="latent", layout=w.Layout(width="480px"))
    typed = w.BoundedIntText(value=options[0][1] if options else 0, min=0,
                             max=reader.d_sae - 1, description="or id")
    out = w.Output()

    def show(j: int) -> None:
        out.clear_output(wait=True)
        with out:
            wins = reader.top_windows(j, n=n_windows, width=width, tokenizer=tokenizer)
            if not wins:
                display(HTML(f"<i>latent {j} never fires in this cache</i>"))
                return
            head = (f"<b>latent {j}</b>: fires on {int(stats.count[j])} tokens "
                    f"({stats.firing_rate[j]:.3%}), max {stats.max_act[j]:.2f}, "
                    f"top-token share {stats.top_token_share[j]:.0%}")
            rows = [f"<div style='margin:4px 0'><code>{wn.max_act:6.2f}</code> "
                    f"{tokens_html(wn.tokens, wn.acts, vmax=float(stats.max_act[j]), peak=wn.peak)}</div>"
                    for wn in wins]
            display(HTML(head + "".join(rows)))

    pick.observe(lambda ch: (typed.__setattr__("value", ch["new"])), names="value")
    typed.observe(lambda ch: show(int(ch["new"])), names="value")
    show(int(typed.value))
    return w.VBox([w.HBox([pick, typed]), out])
