"""Every numbered notebook executes end-to-end under papermill on the smoke profile into one
shared run directory (each chapter reads what the previous one wrote), and what it wrote holds
up: the expected files, numbers in their ranges, verdicts from the known categories. Each test
runs alone too (``pytest -k 05_surprisal``): the chapters it needs are run first when missing."""
from __future__ import annotations

import json
import math

import nbformat
import pytest

from autointerp import findings, explain, metrics, planted, results, run, rundir

NOTEBOOKS = run.notebooks()
EXPECTED = {chapter[:2]: list(files) for chapter, files in rundir.STAGES.items()}  # what each leaves

PREREQUISITES = {"01": ["00"], "02": ["00", "01"], **{c: ["00", "01", "02"] for c in ("03", "04", "05", "06", "07")},
                 "08": ["00", "01", "02", "06", "07"], "09": ["00"],
                 "10": ["00", "01", "02"],
                 "11": ["00", "01", "02", "05", "06", "07", "08", "09", "10"],
                 "12": ["00", "01", "02", "06"]}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("smoke_run")


def test_committed_notebooks_are_clean_and_parametrised():
    assert [p.name[:2] for p in NOTEBOOKS][:2] == ["00", "01"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "parameters" in code[0].metadata.get("tags", []), path.name
        assert "profile" in code[0].source and "run_dir" in code[0].source, path.name
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"


@pytest.mark.notebooks
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes_on_smoke_profile(notebook, run_dir):
    code = notebook.name[:2]
    for need in PREREQUISITES.get(code, ()):  # so that each test also runs alone
        if not all((run_dir / rel).exists() for rel in EXPECTED[need]):
            run.run("smoke", run_dir, only=[need], cell_timeout_s=600)
    run.run("smoke", run_dir, only=[code], cell_timeout_s=600)  # a hang fails, not stalls
    executed = nbformat.read(run_dir / "notebooks" / notebook.name, as_version=4)
    errors = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors
    for rel in EXPECTED.get(notebook.name[:2], []):
        assert (run_dir / rel).exists(), f"{notebook.name} did not write {rel}"
    check_results_files(run_dir)
    CHECKS.get(code, lambda _: None)(run_dir)


def check_results_files(run_dir) -> None:
    """Every results file the run has written so far reads with the one reader, names its schema
    and loads into pandas in one call."""
    files = sorted(run_dir.glob("*.jsonl")) + sorted((run_dir / "scores").glob("*.jsonl"))
    files += sorted(run_dir.glob("variants/*/*.jsonl")) + sorted(run_dir.glob("variants/*/scores/*.jsonl"))
    for path in files:
        header, records = results.read(path)
        assert header["schema"] == results.schema_id(header["kind"]), path
        assert header["provenance"]["packages"]["torch"], path
        assert len(results.frame(path)) == len(records), path
    assert not list(run_dir.rglob("*.tmp")), "a write was left half-done"


def _unit(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and 0.0 <= v <= 1.0)


def check_00(run_dir) -> None:
    cfg = json.loads((run_dir / "run.json").read_text())
    assert cfg["config"]["profile"] == "smoke" and cfg["provenance"]["packages"]["torch"]
    rep = json.loads((run_dir / "sae" / "train_report.json").read_text())
    assert math.isfinite(rep["fvu"]) and 0 < rep["fvu"] < 2 and 0 < rep["frac_alive"] <= 1
    assert rep["d_sae"] == cfg["config"]["sae_width"] and rep["k"] == cfg["config"]["sae_k"]


def check_01(run_dir) -> None:
    cfg = json.loads((run_dir / "run.json").read_text())["config"]
    s = json.loads((run_dir / "cache" / "summary.json").read_text())["stats"]
    assert s["mean_l0"] == cfg["sae_k"]  # a TopK SAE puts exactly k latents on every encoded token
    assert 0 < s["frac_alive"] <= 1 and s["frac_firing_gt_10pct"] <= s["frac_firing_gt_1pct"] <= s["frac_alive"]
    assert s["n_latents"] == cfg["sae_width"]


def check_01_offline(run_dir) -> None:
    """Static life: chapter 01 exported with nbconvert and opened offline draws its plotly figure
    and shows the latent browser as it last was (the runner keeps each view's snapshot)."""
    import browser

    browser.chromium()
    html = browser.export_html(run_dir / "notebooks" / "01_caching.ipynb", run_dir / "browser" / "01_caching.html")
    with browser.page() as pg:
        pg.goto(html.as_uri())
        pg.wait_for_selector(".js-plotly-plot .main-svg", timeout=30000)
        assert pg.locator(".ai-static:has-text('fires on')").count() >= 1  # the latent browser's snapshot
        assert not [e for e in pg.errors if e.startswith("page error")], pg.errors


def check_02(run_dir) -> None:
    _, lexs = results.read(run_dir / "examples.jsonl", "examples")
    ok = [x for x in lexs if not x["skipped_reason"]]
    assert len(ok) >= 2
    for x in ok:
        assert x["test_activating"] and all(e["max_act"] > 0 for e in x["test_activating"] + x["train"])
        assert all(e["max_act"] == 0 for e in x["test_negative"] + x["test_hard_negative"])
    _, rows = results.read(run_dir / "explanations.jsonl", "explanations")
    exps = [e for r in rows for e in r["explanations"]]
    assert {e["latent"] for e in exps if e["explainer"] == "top_tokens" and not e["failed"]} == {x["latent"] for x in ok}
    for e in exps:  # a failure has a cause and no text; a success has a text
        assert (e["text"] is None) == e["failed"]
        if e["failed"] and e["explainer"] in ("llm", "contrastive"):
            assert e["details"]["failure"] in explain.FAILURES, e


def check_scores(run_dir, names: list[str]) -> None:
    for name in names:
        header, recs = results.read(run_dir / "scores" / f"{name}.jsonl", "scores")
        assert header["verdict"] in metrics.VERDICTS, name
        assert 0 <= header["comparison"]["diff"]["n"] <= len(recs) // 2
        assert {r["control"] for r in recs} >= {None} and len({r["control"] for r in recs}) == 2
        for r in recs:
            m = r["metrics"]
            assert all(_unit(m[k]) for k in ("auroc", "balanced_accuracy", "precision", "recall", "accuracy")), (name, m)
            assert m["correlation"] is None or -1 <= m["correlation"] <= 1
        validity = run_dir / "scores" / f"{name}_validity.jsonl"
        if validity.exists():
            vhead, vrecs = results.read(validity, "validity")
            assert vhead["verdict"] in planted.EXAM.values() and vrecs


CHECKS = {
    "00": check_00, "01": lambda d: (check_01(d), check_01_offline(d)), "02": check_02,
    "03": lambda d: check_scores(d, ["detection", "intruder", "intruder_embedding"]),
    "04": lambda d: check_scores(d, ["fuzzing", "fuzzing_active", "simulation"]),
    "05": lambda d: check_scores(d, ["surprisal"]),
    "06": lambda d: check_scores(d, ["embedding"]),
    "07": lambda d: check_07(d),
    "08": lambda d: check_08(d),
    "09": lambda d: check_09(d),
    "10": lambda d: check_10(d),
    "11": lambda d: check_11(d),
    "12": lambda d: check_12(d),
}


def check_10(run_dir) -> None:
    header, recs = results.read(run_dir / "scores" / "selection.jsonl", "scores")
    assert header["verdict"] in metrics.VERDICTS and header["scorer"] == "embedding"
    rates = header["success_rates"]
    assert {"llm_k", "completion", "completion_k"} <= set(rates) and all(r["replies"] > 0 for r in rates.values())
    cands = [r for r in recs if "candidate" in r]
    latents = {r["latent"] for r in cands}
    assert len(latents) >= 2 and all(sum(r["kept"] for r in cands if r["latent"] == j) == 1 for j in latents)
    assert {r["source"] for r in cands} >= {"top_words", "top_tokens"}
    assert len(header["rounds"]) == 2 and header["optimism"]["n"] == len(latents)  # smoke: 1 round


def check_11(run_dir) -> None:
    """The regression check: this smoke run's watched numbers against the committed baseline."""
    doc = json.loads((run_dir / "findings.json").read_text())
    assert doc["schema"] == findings.SCHEMA and len(doc["findings"]) >= 8
    assert all(r["verdict"] in metrics.VERDICTS for r in doc["findings"])
    base = findings.baseline_path("smoke")
    assert base.exists(), f"no smoke baseline at {base}: {findings.REFRESH}"
    drifts = findings.check(run_dir, base)
    assert not drifts, findings.check_text(drifts, base)


def check_09(run_dir) -> None:
    header, recs = results.read(run_dir / "scores" / "alignment.jsonl", "scores")
    assert header["verdict"] in metrics.VERDICTS and set(header["agreement"]) == {"adjacent residual", "other init"}
    by = {r["pair"]: r for r in recs}
    assert {r["kind"] for r in recs} == {"resid", "mlp", "seeds", "widths", "random_floor"}
    assert sum(r["kind"] == "resid" for r in recs) == 6 and by["widths"]["n_a"] < by["widths"]["n_b"]
    for r in recs:
        assert r["n_matched"] == min(r["n_a"], r["n_b"]) == len(set(r["cols"]))  # one to one
        assert -1 <= r["mean_similarity"] <= 1 and all(0 <= v <= 1 for v in r["share_above"].values())
    assert by["random_floor"]["mean_similarity"] < 0.3


def check_08(run_dir) -> None:
    header, rows = results.read(run_dir / "scores" / "baselines.jsonl", "scores")
    info = header["variants"]
    assert set(info) == {"sae", "narrow", "mlp", "neurons", "random_sae", "random_model"}
    assert info["neurons"]["hook"].endswith("mlp.down_proj.input") and info["narrow"]["width"] < info["sae"]["width"]
    assert info["mlp"]["hook"].endswith(".mlp")
    for name, i in info.items():  # every variant scored (the random-init model's row-level latents too)
        assert not i["note"] and not i["missing"], (name, i)
        assert i["n_latents"]["embedding"] >= 2 and i["n_latents"]["intervention"] >= 2 and i["n_latents"]["detection"] >= 2
        assert (run_dir / "variants" / name / "scores" / "intervention.jsonl").exists()
    claims = {r["claim"] for r in rows}
    assert len(claims) == 5 and all(v in metrics.VERDICTS for v in header["verdicts"].values())
    assert {r["scorer"] for r in rows} == {"embedding", "intervention", "detection"}
    for r in rows:
        assert r["low"] <= r["effect"] <= r["high"] and r["planted_exam"] != "-"
        if r["metric"] == "auroc":
            assert -1 <= r["low"] and r["high"] <= 1
        if r["scorer"] == "intervention":
            assert r["metric"] == "mean_score" and r["planted_exam"].startswith("known answer")


def check_07(run_dir) -> None:
    header, recs = results.read(run_dir / "scores" / "intervention.jsonl", "scores")
    conditions = header["summary"]["conditions"]
    assert conditions["trained"]["n"] >= 2 and set(header["verdicts"]) == set(header["summary"]["trained_minus"])
    assert all(v in metrics.VERDICTS for v in header["verdicts"].values())
    for r in recs:
        assert math.isfinite(r["metrics"]["mean_score"]) and r["details"]["strength"] > 0
        assert abs(r["details"]["achieved_kl"] - r["details"]["target_kl"]) < 0.5 * r["details"]["target_kl"]
    known = header["known_answer"]  # planted one-word directions: the path must find every word
    assert known["hits"] == len(known["words"]) >= 2 and known["verdict"] in metrics.VERDICTS
    assert {r["condition"] for r in recs} >= {"known_raised", "known_true", "known_shuffled"}


def check_12(run_dir) -> None:
    """The lab: the export reads back as the lab's own records; the executed chapter keeps each
    view's snapshot (no dead widget references) and its HTML export draws them offline; the report
    opens in headless Chromium with no console errors and draws a latent's page."""
    from autointerp import export, lab

    import browser

    the_lab = lab.open(run_dir)
    header, back = export.load(run_dir / "export" / "features.jsonl")
    assert [f.latent for f in back] == the_lab.latents() and header["d_sae"] == the_lab.reader.d_sae
    for f in back:
        live = the_lab.feature(f.latent)
        assert f.count == live.count and f.hist_counts == live.hist_counts and f.neighbours == live.neighbours
        assert [w.token_ids for w in f.examples] == [w.token_ids for w in live.examples]
        assert sorted((s.scorer, s.value) for s in f.scores) == sorted((s.scorer, s.value) for s in live.scores)
        assert [x.text for x in f.explanations] == [x.text for x in live.explanations]
    assert any(s.control is not None for f in back for s in f.scores), "no score with its control"

    executed = nbformat.read(run_dir / "notebooks" / "12_lab.ipynb", as_version=4)
    outs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    snaps = [o for o in outs if "ai-static" in str(o.get("data", {}).get("text/html", ""))]
    assert len(snaps) >= 2 and not any(run.WIDGET_VIEW in o.get("data", {}) for o in snaps)
    assert "widgets" not in executed.metadata
    exported = browser.export_html(run_dir / "notebooks" / "12_lab.ipynb", run_dir / "browser" / "12_lab.html")
    with browser.page() as pg:
        pg.goto(exported.as_uri())
        pg.wait_for_selector(".ai-static .js-plotly-plot .main-svg", timeout=30000)  # drawn offline
        assert pg.locator(".ai-static .ai-examples div").count() >= 2 and pg.locator(".ai-steering").count()
        assert not [e for e in pg.errors if e.startswith("page error")], pg.errors

    check_verify(run_dir)
    with browser.page() as pg:
        pg.goto((run_dir / "report.html").as_uri())
        j = the_lab.latents()[0]
        pg.click(f"a[href='#latent-{j}']")
        pg.wait_for_selector(f"#latent-{j} .js-plotly-plot .main-svg", timeout=30000)
        assert pg.locator(f"#latent-{j} .ai-examples div").count() >= 2
        assert pg.locator("section.latent.shown").count() == 1
        assert not pg.errors, pg.errors  # no console errors, no failed (network) requests


def check_verify(run_dir) -> None:
    """The finished smoke run checks itself as complete and consistent, and a file that claims
    another SAE or other package versions is caught."""
    from autointerp import verify

    rep = verify.verify(run_dir)
    assert not rep.problems and not rep.incomplete and not rep.not_run, rep.text()
    assert not any("no run identity" in n for n in rep.notes), rep.notes
    assert verify.main([str(run_dir)]) == 0
    path = run_dir / "scores" / "embedding.jsonl"
    original = path.read_text()
    head, *rest = original.splitlines(keepends=True)
    h = json.loads(head)
    h["header"]["provenance"]["run"]["sae_hash"] = "another-sae"
    h["header"]["provenance"]["packages"]["torch"] = "0.0.1"
    try:
        path.write_text(json.dumps(h) + "\n" + "".join(rest))
        rep = verify.verify(run_dir)
        found = " ".join(rep.problems)
        assert "scores/embedding.jsonl was made from another run" in found and "another-sae" in found
        assert "scores/embedding.jsonl was written with other package versions" in found
        assert verify.main([str(run_dir)]) == 1
    finally:
        path.write_text(original)


# the errors JupyterLab's own plotly renderer logs when an Output widget replaces a figure it drew
KNOWN_LAB_NOISE = ("Resize must be passed a displayed plot div element",)


@pytest.mark.notebooks
def test_dashboard_in_a_real_browser(run_dir):
    """JupyterLab on 127.0.0.1 with a token, chapter 12 run cell by cell in headless Chromium: the
    dashboard draws its figure and examples, a new latent id changes them, and a screenshot is
    saved in the run directory."""
    import papermill as pm

    import browser

    browser.chromium()
    for need in PREREQUISITES["12"]:
        if not all((run_dir / rel).exists() for rel in EXPECTED[need]):
            run.run("smoke", run_dir, only=[need], cell_timeout_s=600)
    work = run_dir / "browser"
    work.mkdir(exist_ok=True)
    pm.execute_notebook(str(run.notebooks(["12"])[0]), str(work / "12_lab.ipynb"), prepare_only=True,
                        parameters={"profile": "smoke", "run_dir": str(run_dir)})
    from autointerp import lab

    latents = lab.open(run_dir).latents()
    with browser.jupyterlab(work, work / "jupyter") as (url, token), browser.page() as pg:
        pg.goto(f"{url}/lab/tree/12_lab.ipynb?token={token}")
        pg.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90000)
        pg.wait_for_timeout(3000)  # the kernel starts
        pg.click(".lm-MenuBar-itemLabel:text-is('Run')")
        pg.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        pg.wait_for_selector(".jp-OutputArea-output:has-text('Report:')", timeout=300000)  # the last cell printed
        dash = ".ai-dashboard"
        pg.wait_for_selector(f"{dash} .js-plotly-plot .main-svg", timeout=60000)
        before = pg.locator(f"{dash} .ai-examples")
        j0, text0 = int(before.get_attribute("data-latent")), before.inner_text()
        assert j0 in latents and pg.locator(f"{dash} .ai-examples div").count() >= 2
        j1 = next(j for j in latents if j != j0)
        box = pg.locator(f"{dash} .ai-latent-id input")
        box.fill(str(j1))
        box.press("Enter")
        pg.wait_for_selector(f"{dash} .ai-examples[data-latent='{j1}']", timeout=60000)
        pg.wait_for_selector(f"{dash} .js-plotly-plot .main-svg", timeout=60000)
        assert pg.locator(f"{dash} .ai-examples").inner_text() != text0
        shot = run_dir / "screenshots" / "dashboard.png"
        shot.parent.mkdir(exist_ok=True)
        pg.locator(dash).screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        errors = [e for e in pg.errors if e.startswith("page error") and not any(k in e for k in KNOWN_LAB_NOISE)]
        assert not errors, errors


@pytest.mark.notebooks
def test_no_api_key_in_anything_a_run_writes(run_dir, tmp_path, monkeypatch):
    """Chapters 02 and 03 against an OpenAI-compatible test server with a dummy key from the
    environment: the key reaches the server, and no file the run wrote holds it."""
    import shutil

    from fault_server import FaultServer

    for need in ("00", "01"):
        if not all((run_dir / rel).exists() for rel in EXPECTED[need]):
            run.run("smoke", run_dir, only=[need], cell_timeout_s=600)
    work = tmp_path / "secret_run"
    work.mkdir()
    shutil.copy(run_dir / "run.json", work / "run.json")
    for sub in ("sae", "cache"):
        shutil.copytree(run_dir / sub, work / sub)
    key = "sk-dummy-7f3a91c2e5b84d06a1f0"
    with FaultServer(lifetime_s=900) as srv:
        monkeypatch.setenv("AUTOINTERP_LLM_BASE_URL", srv.base_url)
        monkeypatch.setenv("AUTOINTERP_LLM_MODEL", "fake-model")
        monkeypatch.setenv("OPENAI_API_KEY", key)
        run.run("smoke", work, only=["02", "03"], cell_timeout_s=600)
        assert srv.n_calls > 0 and all(h.get("authorization") == f"Bearer {key}" for h in srv.headers)
    holding = [str(p.relative_to(work)) for p in work.rglob("*") if p.is_file() and key.encode() in p.read_bytes()]
    assert not holding, f"the API key was written to {holding}"
    assert (work / "notebooks" / "03_detection.ipynb").exists() and list((work / "llm_cache").rglob("*.json"))
