"""A run directory that checks itself.

    python -m autointerp.verify RUN_DIR        # exit 0: consistent, no chapter half done; 1: something to fix

Says which chapters' outputs are complete (``rundir.STAGES``), which latents were skipped, failed or
are missing at each stage and why, and whether every file's provenance agrees with ``run.json``: the
model, corpus hash, seed, SAE (its weights' hash) and hook each results file was made from
(``results.run_identity``), the cache's manifest, the package versions, and the LLM each stage used.
"""
from __future__ import annotations

import argparse
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from . import results
from .rundir import STAGES, RunDir

IDENTITY = ("model", "corpus_hash", "seed", "hook", "sae", "sae_hash")


@dataclass
class Report:
    run_dir: Path
    complete: list[str] = field(default_factory=list)
    incomplete: dict[str, list[str]] = field(default_factory=dict)  # started, not finished: missing files
    not_run: list[str] = field(default_factory=list)
    latents: list[str] = field(default_factory=list)  # skipped / failed / missing, with why
    problems: list[str] = field(default_factory=list)  # inconsistencies and damaged files
    notes: list[str] = field(default_factory=list)  # facts worth knowing (LLMs used, older files)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.incomplete

    def text(self) -> str:
        out = [f"Run directory {self.run_dir}:",
               f"  complete: {', '.join(self.complete) or 'nothing yet'}"]
        if self.not_run:
            out.append(f"  not run yet: {', '.join(self.not_run)}")
        for ch, missing in self.incomplete.items():
            out.append(f"  incomplete: {ch} (missing {', '.join(missing)}): run notebooks/{ch}.ipynb")
        out += [f"  latent: {x}" for x in self.latents]
        out += [f"  PROBLEM: {x}" for x in self.problems]
        out += [f"  note: {x}" for x in self.notes]
        out.append("  verdict: " + ("inconsistent" if self.problems else "a chapter did not finish" if self.incomplete
                                    else "consistent" + (", every chapter finished" if not self.not_run else "")))
        return "\n".join(out)


def _expected_identity(root: Path) -> dict[str, dict]:
    """Per folder holding a cache (the run, each variant): the identity its files must carry."""
    out = {}
    for manifest in [root / "cache" / "manifest.json", *sorted(root.glob("variants/*/cache/manifest.json"))]:
        probe = manifest.parent.parent / "x.jsonl"
        if manifest.exists():
            out[str(manifest.parent.parent)] = results.run_identity(probe)
    return out


def verify(run_dir: str | Path) -> Report:
    """Check one run directory (see the module docstring)."""
    rd = RunDir(Path(run_dir))
    rep = Report(rd.root)
    if not rd.config_file.exists():
        rep.problems.append(f"no run.json in {rd.root}: not a run directory (notebooks/00_setup.ipynb makes one)")
        return rep
    run = json.loads(rd.config_file.read_text())
    packages = run.get("provenance", {}).get("packages", {})
    for ch, files in STAGES.items():
        missing = [f for f in files if not (rd.root / f).exists()]
        if not missing:
            rep.complete.append(ch)
        elif len(missing) < len(files):
            rep.incomplete[ch] = missing
        else:
            rep.not_run.append(ch)
    _check_cache(rd, run, rep)
    _interrupted(rd, rep)
    expected = _expected_identity(rd.root)
    files = sorted(rd.root.glob("*.jsonl")) + sorted(rd.root.glob("scores/*.jsonl")) + sorted(
        rd.root.glob("variants/*/*.jsonl")) + sorted(rd.root.glob("variants/*/scores/*.jsonl")) + sorted(
        rd.root.glob("export/*.jsonl"))
    llms: Counter = Counter()
    old = []
    for path in files:
        rel = path.relative_to(rd.root)
        try:
            header, rows = results.read(path)
        except (ValueError, OSError) as err:
            rep.problems.append(f"{rel}: {err}")
            continue
        prov = header.get("provenance", {})
        diff = {k: (v, prov.get("packages", {}).get(k)) for k, v in packages.items()
                if prov.get("packages", {}).get(k) != v}
        if diff:
            rep.problems.append(f"{rel} was written with other package versions {diff} (run.json, file): "
                                "rerun its chapter, or start a new run dir")
        ident = prov.get("run")
        want = expected.get(str(next((d for d in path.parents if str(d) in expected), rd.root)))
        if ident is None:
            old.append(str(rel))
        elif want:
            bad = {k: (want.get(k), ident.get(k)) for k in IDENTITY if want.get(k) != ident.get(k)}
            if bad:
                rep.problems.append(f"{rel} was made from another run {bad} (now, then): rerun its chapter")
        llm = header.get("llm")
        if llm:
            llms[llm.get("model") if isinstance(llm, dict) else str(llm)] += 1
        _latents(rel, header, rows, rep)
    if old:
        rep.notes.append(f"{len(old)} file(s) carry no run identity (written before it was recorded): "
                         f"{', '.join(old[:4])}{' ...' if len(old) > 4 else ''}")
    if llms:
        rep.notes.append("LLMs used: " + ", ".join(f"{m} ({n} files)" for m, n in llms.items()))
    return rep


def _interrupted(rd: RunDir, rep: Report) -> None:
    """What a killed process left: a training pass's staging folder, temporary files of atomic writes."""
    for stage in sorted({*rd.root.glob("**/.training*"), *rd.root.glob("**/.*.training")}):
        done = (stage / "complete").exists()
        rep.notes.append(f"{stage.relative_to(rd.root)}: an interrupted SAE training pass ("
                         + ("finished; its SAEs are moved into place" if done else "not finished; it is trained again")
                         + " when its chapter is rerun)")
    tmp = sorted(p.relative_to(rd.root) for p in rd.root.rglob("*.tmp"))
    if tmp:
        rep.notes.append(f"{len(tmp)} temporary file(s) left by a killed write ({', '.join(map(str, tmp[:3]))}): "
                         "the files they were replacing are intact; the next write replaces them")


def _check_cache(rd: RunDir, run: dict, rep: Report) -> None:
    m = rd.cache_dir / "manifest.json"
    if not m.exists():
        return
    man, cfg = json.loads(m.read_text()), run.get("config", {})
    corpus = (run.get("provenance", {}).get("corpus") or {}).get("content_hash")
    for key, want in (("model", cfg.get("model")), ("hook", cfg.get("hook")), ("corpus_hash", corpus)):
        if want is not None and man.get(key) != want:
            rep.problems.append(f"cache/manifest.json has {key}={man.get(key)!r}, run.json {want!r}: the cache "
                                "belongs to another run; delete cache/ and rerun notebooks/01_caching.ipynb")
    if rd.sae_dir.joinpath("cfg.json").exists():
        from . import saes
        from .cache import sae_fingerprint

        fp = sae_fingerprint(saes.load(str(rd.sae_dir)))
        if fp != man.get("sae_hash"):
            rep.problems.append(f"the SAE in sae/ (hash {fp}) is not the one the cache was made with "
                                f"({man.get('sae_hash')}): delete cache/ and rerun notebooks/01_caching.ipynb")


def _summary(items: list[tuple[int, str]], n_show: int = 3) -> str:
    """"12 (why; ...)" for a list of (latent, reason): the latents, then the commonest reasons."""
    ids = sorted({j for j, _ in items})
    reasons = Counter(why[:70] for _, why in items).most_common(2)
    shown = ", ".join(map(str, ids[:n_show])) + (f" and {len(ids) - n_show} more" if len(ids) > n_show else "")
    return f"{shown} ({'; '.join(f'{w} x{n}' if n > 1 else w for w, n in reasons)})"


def _latents(rel: Path, header: dict, rows: list[dict], rep: Report) -> None:
    """Skipped, failed and missing latents of one file, with the reasons, one line per kind."""
    skipped = [(int(j), str(why)) for j, why in (header.get("skipped") or {}).items()]
    if skipped and header.get("kind") != "explanations":  # explanations.jsonl repeats examples.jsonl's
        rep.latents.append(f"{rel}: {len(skipped)} latent(s) skipped: {_summary(skipped)}")
    if header.get("kind") == "explanations":
        by: dict[str, list] = {}
        for r in rows:
            for x in r.get("explanations", []):
                if x.get("failed"):
                    by.setdefault(x["explainer"], []).append((r["latent"], x.get("error") or "?"))
        for name, items in by.items():
            rep.latents.append(f"{rel}: explainer {name} failed on {len({j for j, _ in items})} of {len(rows)} "
                               f"latent(s): {_summary(items)}")
    elif header.get("kind") == "scores" and rows and "metrics" in rows[0]:
        wanted = {int(j) for j in (header.get("explainer") or {})}
        lost = sorted(wanted - {int(r["latent"]) for r in rows if "latent" in r})
        if lost:
            rep.problems.append(f"{rel}: latent(s) {lost} had an explanation and no result: rerun its chapter")
        failed = [(int(r["latent"]), f.get("reason", "?")) for r in rows if not r.get("control")
                  for f in (r.get("usage") or {}).get("failures", [])]
        if failed:
            rep.latents.append(f"{rel}: {len(failed)} example(s) of {len({j for j, _ in failed})} latent(s) could "
                               f"not be scored: {_summary(failed)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autointerp.verify", description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args(argv)
    rep = verify(args.run_dir)
    print(rep.text())
    return 0 if rep.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
