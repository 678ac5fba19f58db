"""Run the notebook sequence with papermill into one run directory.

    python -m autointerp.run --profile demo                 # all chapters, data/runs/demo
    python -m autointerp.run --profile smoke --run-dir /tmp/r --only 00 01
    python -m autointerp.run -p model=/models/gpt2 -p hook=transformer.h.6

Executed notebooks land in ``<run_dir>/notebooks``; every stage writes its results beside them.
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from .config import PROFILE_NAMES, resolve
from .paths import repo_root


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The numbered chapters, in order (optionally only those whose number is listed)."""
    found = sorted((repo_root() / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if p.name[:2] in {o.zfill(2) for o in only}]
        if not found:
            raise SystemExit(f"No notebook matches --only {only}.")
    return found


def _parse_param(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep:
        raise SystemExit(f"-p expects KEY=VALUE, got {text!r}.")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return key.strip(), value


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
RECORDING = "AUTOINTERP_RECORDING"  # set for the kernels the runner starts: no live frontend watches


def keep_snapshots(path: Path) -> int:
    """An executed notebook is a record, its kernel gone: where a view also carries an HTML snapshot
    of its state (``widgets.view``), keep the snapshot and drop the dead widget reference, and drop
    the saved widget state (drawing it needs a CDN). JupyterLab and an HTML export then both show
    each view as it last was. Returns how many outputs changed."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    changed = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_VIEW in data and "text/html" in data:
                del data[WIDGET_VIEW]
                changed += 1
    nb.metadata.pop("widgets", None)
    nbformat.write(nb, path)
    return changed


class ChapterFailed(RuntimeError):
    """A chapter raised: which one, in which cell, the error's own message, and where the executed
    notebook with the full trace is (what ``python -m autointerp.run`` prints, in a few lines)."""

    def __init__(self, chapter: str, cell: int | None, ename: str, evalue: str, notebook: Path) -> None:
        self.chapter, self.cell, self.ename, self.evalue, self.notebook = chapter, cell, ename, evalue, notebook
        super().__init__(f"chapter {chapter} failed in cell [{cell}]: {ename}: {evalue}\n"
                         f"  full trace: {notebook}")


CELL_TIMEOUT_S = 1800  # a cell that runs longer has hung (a full-profile cell may need more: --cell-timeout)


def run(profile: str, run_dir: Path, only: list[str] | None = None,
        params: dict[str, object] | None = None, cell_timeout_s: int = CELL_TIMEOUT_S) -> Path:
    import papermill as pm

    cfg = resolve(profile, run_dir)  # validates the profile before anything runs
    # for the kernels it starts (they inherit the environment; restored afterwards): figures carry
    # plotly.js inline, so offline exports draw them, and views driven from code refresh their
    # snapshot in the executed notebook (``labview``)
    kernel_env = {"PLOTLY_RENDERER": os.environ.get("PLOTLY_RENDERER", "plotly_mimetype+notebook"), RECORDING: "1"}
    saved = {k: os.environ.get(k) for k in kernel_env}
    os.environ.update(kernel_env)
    out_dir = cfg.path.notebooks_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for nb in notebooks(only):
            t0 = time.perf_counter()
            print(f"[autointerp] {nb.name} ...", flush=True)
            try:
                pm.execute_notebook(
                    str(nb), str(out_dir / nb.name), cwd=str(nb.parent), progress_bar=False,
                    execution_timeout=cell_timeout_s,
                    parameters={"profile": profile, "run_dir": cfg.run_dir, **(params or {})},
                )
            except pm.PapermillExecutionError as err:
                raise ChapterFailed(nb.stem, err.exec_count, err.ename, err.evalue, out_dir / nb.name) from None
            keep_snapshots(out_dir / nb.name)
            print(f"[autointerp] {nb.name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    print(f"[autointerp] run directory: {cfg.run_dir}")
    return Path(cfg.run_dir)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo", choices=PROFILE_NAMES)
    ap.add_argument("--run-dir", type=Path, default=None, help="default: data/runs/<profile>")
    ap.add_argument("--only", nargs="*", help="chapter numbers to run, e.g. 00 01")
    ap.add_argument("-p", "--param", action="append", default=[], help="notebook parameter KEY=VALUE")
    ap.add_argument("--cell-timeout", type=int, default=CELL_TIMEOUT_S, help="seconds per cell")
    args = ap.parse_args(argv)
    params = dict(_parse_param(p) for p in args.param)
    try:
        run(args.profile, args.run_dir, args.only, params, args.cell_timeout)
    except ChapterFailed as err:
        print(f"[autointerp] {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
