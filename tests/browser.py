"""A real browser for the tests: Debian's chromium driven by playwright (nothing downloaded), and
a JupyterLab server on 127.0.0.1 with a token. The Makefile's test set-up installs chromium."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/bin/google-chrome")


def chromium() -> str:
    """The system browser's path; missing: a failure under CI (its set-up installs it), else a skip."""
    found = next((p for p in CHROMIUM if Path(p).exists()), None) or shutil.which("chromium")
    if found:
        return found
    why = "no chromium: `make test` installs it (apt-get install chromium), or set it up yourself"
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def page(viewport=(1280, 1600)):
    """A headless page; ``page.errors`` collects console errors, page errors and failed requests."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            pg = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
            pg.errors = []
            pg.on("console", lambda m: m.type == "error" and pg.errors.append(f"console: {m.text[:300]}"))
            pg.on("pageerror", lambda e: pg.errors.append(f"page error: {str(e)[:300]}"))
            pg.on("requestfailed", lambda r: pg.errors.append(f"request failed: {r.url[:200]}"))
            yield pg
        finally:
            browser.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def jupyterlab(root: Path, home: Path, timeout_s: float = 90.0):
    """JupyterLab serving ``root`` on 127.0.0.1 (a fresh token, config and workspace under ``home``);
    yields the base URL with the token."""
    port, token = _free_port(), secrets.token_hex(16)
    env = {**{k: v for k, v in os.environ.items() if k != "AUTOINTERP_RECORDING"}, "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"), "JUPYTER_DATA_DIR": str(home / "data")}
    # the kernel: ipykernel's own "python3" spec, i.e. this interpreter (no user kernelspecs in a fresh data dir)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    home.mkdir(parents=True, exist_ok=True)
    log = (home / "jupyterlab.log").open("w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"JupyterLab did not start; see {home / 'jupyterlab.log'}")
                time.sleep(0.5)
        yield url, token
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def export_html(notebook: Path, out: Path) -> Path:
    """An executed notebook as nbconvert's HTML (what a reader shares), written to ``out``."""
    import nbformat
    from nbconvert import HTMLExporter

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(HTMLExporter().from_notebook_node(nbformat.read(notebook, as_version=4))[0], encoding="utf-8")
    return out
