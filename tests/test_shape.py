"""The lab's one shape: one settings table, one run-directory layout, one results format."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from autointerp import config, results
from autointerp.records import ScoredExample, ScorerResult, Window
from autointerp.rundir import ARTIFACTS, MissingArtifact, RunDir

LIB = Path(__file__).resolve().parents[1] / "lib" / "autointerp"


def test_every_section_resolves_for_every_profile():
    for profile in config.PROFILE_NAMES:
        table = config.resolved(profile)
        assert set(table) == set(config.SETTINGS)
        for section, values in table.items():
            assert values == {**values, **config.settings(section, profile)}
    # a scorer inherits the shared scoring knobs, then its own win
    demo = config.settings("surprisal", "demo")
    assert demo["planted_tokens"] == config.SETTINGS["scoring"]["demo"]["planted_tokens"]
    assert demo["n_latents"] == config.SETTINGS["surprisal"]["demo"]["n_latents"] != \
        config.SETTINGS["scoring"]["demo"]["n_latents"]
    assert config.settings("detection", "smoke", n_latents=7, n_pos=None)["n_pos"] == 2
    assert config.settings("detection", "smoke", n_latents=7)["n_latents"] == 7


def test_settings_errors_name_what_to_change():
    with pytest.raises(ValueError, match="Unknown profile 'huge'"):
        config.settings("examples", "huge")
    with pytest.raises(ValueError, match="Unknown settings section 'nope'"):
        config.settings("nope", "demo")
    with pytest.raises(ValueError, match=r"Unknown setting\(s\) \['n_latnts'\] for detection"):
        config.settings("detection", "demo", n_latnts=3)
    # dataclass sections know their fields (the reference defaults live in the dataclass)
    assert config.settings("examples", "demo", example_ctx_len=16)["example_ctx_len"] == 16


def test_config_command_prints_every_stage():
    out = subprocess.run([sys.executable, "-m", "autointerp.config", "--profile", "demo", "--json"],
                         capture_output=True, text=True, check=True).stdout
    table = json.loads(out)
    assert table["run"]["sae_width"] == 2048 and table["examples"]["window"] == "centred"
    assert table["detection"]["n_latents"] == 5 and table["intervention"]["n_prompts"] == 6
    text = subprocess.run([sys.executable, "-m", "autointerp.config", "--profile", "smoke"],
                          capture_output=True, text=True, check=True).stdout
    assert "[surprisal] (inherits scoring)" in text and "min_examples" in text


def test_no_other_module_keeps_a_profile_table_or_spells_an_artifact():
    # file names and the one folder name that is not also a word of the code ("scores" is a results kind)
    names = {rel.rsplit("/", 1)[-1] for rel, _ in ARTIFACTS.values() if "." in rel} | {"llm_cache"}
    for path in LIB.rglob("*.py"):
        if path.name in ("rundir.py", "config.py"):
            continue
        text = path.read_text()
        assert not re.search(r"^\s*PROFILE_SETTINGS\s*[:=]", text, re.M), path
        assert not re.search(r'\{\s*"smoke"\s*:', text), f"{path} holds a per-profile table"
        for name in names:
            assert f'"{name}"' not in text and f"'{name}'" not in text, f"{path} spells {name!r}"


def test_run_dir_says_which_chapter_to_run(tmp_path):
    rd = RunDir(tmp_path)
    assert rd.examples == tmp_path / "examples.jsonl" and rd.scores("x") == tmp_path / "scores" / "x.jsonl"
    with pytest.raises(MissingArtifact, match=r"No examples.jsonl .*run notebooks/02_explaining.ipynb"):
        rd.require("examples")
    with pytest.raises(FileNotFoundError, match="00_setup"):
        config.load(tmp_path)
    rd.examples.write_text("")
    assert rd.require("examples") == rd.examples


def test_results_round_trip_with_schema_and_refuse_other_files(tmp_path):
    w = Window(3, 1, 2, (5, 6), (0.0, 1.5), 1.5, 0, "activating")
    assert w.id == "1:2" and w.label and w.peak == 1
    from autointerp.metrics import latent_metrics

    r = ScorerResult(3, "toy", "e", (ScoredExample(3, w.id, "x", True, 0, score=float("nan")),),
                     latent_metrics(3, [True], scores=[0.5]))
    path = results.write(tmp_path / "s.jsonl", "scores", [r], settings={"k": 1}, prompt_hash="abc", seed=0)
    header, recs = results.read(path, "scores")
    assert header["schema"] == "autointerp.scores/1" and header["settings"] == {"k": 1}
    assert header["prompt_hash"] == "abc" and header["provenance"]["packages"]["numpy"]
    assert recs[0]["examples"][0]["score"] is None  # NaN is written as null
    df = results.frame(path)
    assert len(df) == 1 and df.attrs["header"]["seed"] == 0 and df.loc[0, "metrics.n_pos"] == 1
    with pytest.raises(ValueError, match="not 'examples'"):
        results.read(path, "examples")
    (tmp_path / "old.jsonl").write_text(json.dumps({"header": True, "kind": "examples"}) + "\n{}\n")
    with pytest.raises(ValueError, match="not an autointerp results header"):
        results.read(tmp_path / "old.jsonl")
    (tmp_path / "future.jsonl").write_text(json.dumps({"header": {"schema": "autointerp.scores/9"}}) + "\n")
    with pytest.raises(ValueError, match="not one this version reads"):
        results.read(tmp_path / "future.jsonl")
    with pytest.raises(ValueError, match="Unknown results kind"):
        results.write(tmp_path / "x.jsonl", "nope", [])
    assert not list(tmp_path.glob("*.tmp"))  # writes are atomic


def _top_level_imports(path: Path, package: str) -> set[str]:
    """autointerp modules a file imports at module level (relative imports resolved)."""
    import ast

    out = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" for a in node.names]
            out |= {n for n in names if (LIB.parent / n.replace(".", "/")).with_suffix(".py").exists()
                    or (LIB.parent / n.replace(".", "/") / "__init__.py").exists()} or {mod}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("autointerp")}
    return out


def test_no_import_cycles_and_the_list_of_stages_is_true():
    import autointerp

    graph = {}
    for path in LIB.rglob("*.py"):
        rel = path.relative_to(LIB.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rsplit(".", 1)[0]
        graph[name] = {m for m in _top_level_imports(path, package) if m != name}

    def visit(node, stack):
        assert node not in stack, f"import cycle: {' -> '.join([*stack, node])}"
        for dep in graph.get(node, ()):
            if not (dep.startswith(node + ".")):  # a package importing its own submodules is fine
                visit(dep, [*stack, node])

    for node in graph:
        visit(node, [])
    top = {p.stem for p in LIB.glob("*.py")} | {p.name for p in LIB.iterdir() if (p / "__init__.py").exists()}
    assert autointerp._STAGES == top - {"__init__"}
