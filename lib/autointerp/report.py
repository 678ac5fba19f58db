"""One self-contained HTML report of a run: its chapters, its findings and a page per scored latent.

    python -m autointerp.report RUN_DIR [--out FILE]      # writes RUN_DIR/report.html

The file opens from disk with no network: plotly.js is inlined once, figures are drawn from JSON
when their page is opened (``#latent-17``), and nothing is fetched. The latent pages use the same
HTML pieces as the live dashboard (``labview``).
"""
from __future__ import annotations

import argparse
import html
import json
import os
from collections.abc import Sequence
from pathlib import Path

from . import labview
from .lab import Feature, Lab

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1100px;padding:0 16px;color:#222}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:6px 0;z-index:9}
nav a{margin-right:14px} table{border-collapse:collapse;margin:4px 0} td,th{border:1px solid #ddd;padding:2px 6px;
font-size:13px;vertical-align:top} th{background:#f4f4f4} .latent{display:none} .latent.shown{display:block}
pre{white-space:pre-wrap;background:#fafafa;padding:6px;font-size:12px;max-height:400px;overflow:auto}
.bad{color:#b00} .good{color:#2a7a2a}
"""

ROUTER = """
function route(){
  var id = location.hash.slice(1);
  document.querySelectorAll('section.latent').forEach(function(s){
    var on = s.id === id; s.classList.toggle('shown', on);
    if (on) { s.querySelectorAll('script.fig').forEach(function(f){
      var div = document.getElementById(f.dataset.target);
      if (!div.dataset.drawn) { var fig = JSON.parse(f.textContent);
        Plotly.newPlot(div, fig.data, fig.layout, {responsive: true}); div.dataset.drawn = '1'; } }); }
  });
}
window.addEventListener('hashchange', route); window.addEventListener('load', route);
"""


def _chapters(lab: Lab) -> str:
    nbs = sorted(lab.rundir.notebooks_dir.glob("*.ipynb")) if lab.rundir.notebooks_dir.exists() else []
    if not nbs:
        return "<p><i>no executed chapters in this run directory (the runner writes them: python -m autointerp.run)</i></p>"
    parts = []
    for p in nbs:
        nb = json.loads(p.read_text(encoding="utf-8"))
        pm = nb.get("metadata", {}).get("papermill", {})
        title = next((c["source"] if isinstance(c["source"], str) else "".join(c["source"])
                      for c in nb["cells"] if c["cell_type"] == "markdown"), p.stem).splitlines()[0].lstrip("# ")
        errors = [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                  if o.get("output_type") == "error"]
        text = "".join("".join(o.get("text", "")) if isinstance(o.get("text"), list) else o.get("text", "")
                       for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])
                       if o.get("output_type") == "stream" and o.get("name") == "stdout")
        status = (f"<span class='bad'>failed: {html.escape(errors[0].get('ename', ''))}: "
                  f"{html.escape(str(errors[0].get('evalue', ''))[:300])}</span>" if errors else "<span class='good'>ran</span>")
        dur = f"{pm['duration']:.0f} s" if isinstance(pm.get("duration"), (int, float)) else "?"
        parts.append(f"<details><summary><b>{html.escape(p.stem)}</b> {html.escape(title)} — {status}, {dur}"
                     f"</summary><pre>{html.escape(text[-20000:]) or '(printed nothing)'}</pre></details>")
    return "".join(parts)


def _findings(lab: Lab) -> str:
    path = lab.rundir.path("findings")
    if not path.exists():
        return "<p><i>no findings.json yet: run notebooks/11_findings.ipynb</i></p>"
    rows = []
    for f in json.loads(path.read_text()).get("findings", []):
        ci = "" if f.get("low") is None else f"[{f['low']:+.3f}, {f['high']:+.3f}]"
        eff = "—" if f.get("effect") is None else f"{f['effect']:+.3f}"
        rows.append(f"<tr><td>{html.escape(str(f.get('claim')))}</td><td>{html.escape(str(f.get('scorer') or ''))}</td>"
                    f"<td>{eff} {ci}</td><td>{f.get('n', '')}</td><td>{html.escape(str(f.get('planted_exam') or ''))}</td>"
                    f"<td>{html.escape(str(f.get('verdict') or ''))}</td><td>{html.escape(str(f.get('reading') or ''))}</td></tr>")
    return ("<table><tr><th>claim</th><th>scorer</th><th>effect [95% CI]</th><th>n</th><th>planted exam</th>"
            f"<th>verdict</th><th>reading</th></tr>{''.join(rows)}</table>")


def _index(features: Sequence[Feature]) -> str:
    rows = []
    for f in features:
        best = max((s for s in f.scores if s.control is not None), key=lambda s: s.gap, default=None)
        score = "" if best is None else f"{best.scorer} {best.value:.2f} (control {best.control:.2f})"
        rows.append(f"<tr><td><a href='#latent-{f.latent}'>{f.latent}</a></td><td>{f.firing_rate:.3%}</td>"
                    f"<td>{f.max_act:.2f}</td><td style='text-align:left'>{html.escape((f.explanation or '')[:120])}</td>"
                    f"<td>{score}</td></tr>")
    return ("<table><tr><th>latent</th><th>fires on</th><th>max</th><th>explanation</th>"
            f"<th>largest gap over a control</th></tr>{''.join(rows)}</table>")


def _page(f: Feature, lab: Lab) -> str:
    fig = labview.histogram_figure(f).to_json().replace("</", "<\\/")
    return (f"<section class='latent' id='latent-{f.latent}'><p><a href='#latents'>&larr; all latents</a></p>"
            f"{labview.header_html(f)}{labview.scores_html(f)}{labview.explanations_table(f)}"
            f"<div id='fig-{f.latent}'></div><script type='application/json' class='fig' "
            f"data-target='fig-{f.latent}'>{fig}</script>"
            f"{labview.logit_html(f)}{labview.examples_html(f, lab.decode)}{labview.related_html(f)}</section>")


def render(lab: Lab, features: Sequence[Feature] | None = None) -> str:
    """The report as one HTML string."""
    from plotly.offline import get_plotlyjs

    features = list(features) if features is not None else [lab.feature(j) for j in lab.latents()]
    cfg = lab.cfg
    settings = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
                       for k, v in cfg.to_dict().items()) if hasattr(cfg, "to_dict") else ""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>autointerp run {html.escape(str(lab.rundir.root.name))}"
            f"</title><style>{STYLE}</style><script>{get_plotlyjs()}</script></head><body>"
            "<nav><a href='#overview'>overview</a><a href='#chapters'>chapters</a><a href='#findings'>findings</a>"
            f"<a href='#latents'>latents ({len(features)})</a></nav>"
            f"<h1 id='overview'>autointerp run: {html.escape(str(lab.rundir.root.name))}</h1>"
            f"<p>profile <b>{html.escape(cfg.profile)}</b>, model <b>{html.escape(cfg.model)}</b>, hook "
            f"<code>{html.escape(cfg.hook)}</code>, SAE {html.escape(cfg.sae)} with {lab.reader.d_sae} latents, "
            f"{lab.stats.n_tokens} cached tokens.</p><details><summary>settings</summary><table>{settings}</table></details>"
            f"<h2 id='chapters'>Chapters</h2>{_chapters(lab)}<h2 id='findings'>Findings</h2>{_findings(lab)}"
            f"<h2 id='latents'>Latents</h2><p>Each explained or scored latent has a page: click its id.</p>{_index(features)}"
            + "".join(_page(f, lab) for f in features) + f"<script>{ROUTER}</script></body></html>")


def write(lab: Lab, features: Sequence[Feature] | None = None, path: str | os.PathLike | None = None) -> Path:
    """Write the report (default ``<run>/report.html``) atomically."""
    path = Path(path) if path else lab.rundir.path("report")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(render(lab, features), encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    from . import lab as lab_mod

    ap = argparse.ArgumentParser(prog="python -m autointerp.report", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="where to write (default RUN_DIR/report.html)")
    args = ap.parse_args(argv)
    path = write(lab_mod.open(args.run_dir), path=args.out)
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB): open it in any browser, no network needed.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
