"""The one results format: JSONL whose first line is a header naming its schema.

Line 1 is ``{"header": {"schema": "autointerp.<kind>/<version>", "kind": ..., "settings": ...,
"prompt_hash": ..., "provenance": ..., ...}}``; every further line is one record (a dataclass or a
dict, written as plain JSON; NaN and inf as null). ``write`` is atomic (temporary file, then
rename); ``read`` checks the schema; ``frame`` loads any results file into pandas in one call.
Kinds: ``scores`` (one record per latent and condition), ``validity`` (a planted-latent exam, one
record per planted latent), ``examples`` (one per latent), ``explanations`` (one per latent),
``features`` (the Neuronpedia-style export, one per latent).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

SCHEMAS: dict[str, int] = {"scores": 1, "validity": 1, "examples": 1, "explanations": 1, "features": 1}
PREFIX = "autointerp."


def schema_id(kind: str) -> str:
    """``autointerp.<kind>/<version>`` for a known kind."""
    if kind not in SCHEMAS:
        raise ValueError(f"Unknown results kind {kind!r}; kinds: {sorted(SCHEMAS)}.")
    return f"{PREFIX}{kind}/{SCHEMAS[kind]}"


def plain(obj: Any) -> Any:
    """JSON-ready: dataclasses -> dicts, tuples -> lists, numpy -> Python, NaN/inf -> null."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return plain(obj.tolist())
    if isinstance(obj, np.generic):
        return plain(obj.item())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def digest(payload: Any) -> str:
    """sha256 (16 hex) of a JSON-able payload: the prompt hash of templates and settings."""
    import hashlib

    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


def provenance() -> dict[str, Any]:
    """Package versions and platform facts recorded with every result."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    pkgs = {}
    for name in ("autointerp", "torch", "transformers", "nnsight", "sae-lens", "numpy", "openai",
                 "llama-cpp-python", "sentence-transformers"):
        try:
            pkgs[name] = version(name)
        except PackageNotFoundError:
            pkgs[name] = None
    return {"python": platform.python_version(), "platform": platform.platform(), "packages": pkgs}


def run_identity(path: str | os.PathLike) -> dict[str, Any] | None:
    """What a file inside a run directory was made from: the run's model, corpus hash and seed
    (``run.json`` in the nearest folder above that has one) and the SAE, its weights' hash and the
    hook (the nearest ``cache/manifest.json`` on the way: a baseline variant has its own). None
    outside a run directory. ``python -m autointerp.verify`` checks these against the run."""
    from .rundir import RunDir

    path = Path(path).resolve()
    manifest = None
    for d in map(RunDir, path.parents):
        m = d.cache_dir / "manifest.json"
        if manifest is None and m.is_file():
            manifest = json.loads(m.read_text())
        if d.config_file.is_file():
            run = json.loads(d.config_file.read_text())
            cfg, prov = run.get("config", {}), run.get("provenance", {})
            ident = {"model": cfg.get("model"), "corpus_hash": (prov.get("corpus") or {}).get("content_hash"),
                     "seed": cfg.get("seed"), "hook": cfg.get("hook"), "sae": cfg.get("sae")}
            if manifest:
                ident.update(hook=manifest.get("hook"), sae=manifest.get("sae_id"), sae_hash=manifest.get("sae_hash"))
            return ident
    return None


def _atomic_text(path: Path, write) -> Path:
    """Write to ``<path>.tmp``, then rename over ``path``: a crash or a full disk leaves the old
    file as it was (the half-written temporary is removed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with tmp.open("w", encoding="utf-8") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        kept = f"the previous {path.name} is kept unchanged" if path.exists() else "nothing else was touched"
        raise OSError(err.errno, f"Could not write {path} ({err.strerror or err}): {kept}; free some space "
                                 "(or set AUTOINTERP_DATA to a bigger disk) and rerun the chapter.") from err
    return path


def write(path: str | os.PathLike, kind: str, records: Iterable[Any], *,
          settings: Mapping[str, Any] | None = None, prompt_hash: str | None = None,
          **header: Any) -> Path:
    """Write a results file atomically: the schema'd header (``header`` plus settings, prompt
    hash and package provenance), then one line per record."""
    head = {"schema": schema_id(kind), "kind": kind, "settings": dict(settings or {}),
            "prompt_hash": prompt_hash, **header}
    head.setdefault("provenance", provenance())
    ident = run_identity(path)
    if ident is not None:
        head["provenance"] = {**head["provenance"], "run": ident}

    def lines(f) -> None:
        f.write(json.dumps({"header": plain(head)}, allow_nan=False, default=str) + "\n")
        for rec in records:
            f.write(json.dumps(plain(rec), allow_nan=False, default=str) + "\n")

    return _atomic_text(Path(path), lines)


def read(path: str | os.PathLike, kind: str | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(header, records)`` of a results file; ``kind`` (optional) must match its schema."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No results file {path}.")
    with path.open(encoding="utf-8") as f:
        first = f.readline()
        try:
            head = json.loads(first) if first.strip() else None
        except json.JSONDecodeError:
            head = None
        schema = head.get("header", {}).get("schema") if isinstance(head, dict) and isinstance(
            head.get("header"), dict) else None
        if not schema or not str(schema).startswith(PREFIX):
            raise ValueError(f"{path}: line 1 is not an autointerp results header ({{'header': "
                             "{'schema': 'autointerp.<kind>/<version>', ...}}); write it with "
                             "autointerp.results.write.")
        got_kind, _, version = str(schema)[len(PREFIX):].partition("/")
        if got_kind not in SCHEMAS or str(SCHEMAS[got_kind]) != version:
            raise ValueError(f"{path}: schema {schema!r} is not one this version reads "
                             f"({[schema_id(k) for k in SCHEMAS]}); rerun the chapter that wrote it.")
        if kind is not None and got_kind != kind:
            raise ValueError(f"{path} holds {got_kind!r} results, not {kind!r}.")
        records = [json.loads(line) for line in f if line.strip()]
    return head["header"], records


def frame(path: str | os.PathLike):
    """Any results file as a pandas DataFrame, one row per record: nested dicts flatten to
    ``a.b`` columns, lists stay list cells, null reads as NaN/None. The header is ``df.attrs["header"]``."""
    import pandas as pd

    header, records = read(path)
    df = pd.json_normalize(records) if records else pd.DataFrame()
    df.attrs["header"] = header
    return df


def write_json(path: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write one JSON document atomically (run.json, the cache summary)."""
    return _atomic_text(Path(path), lambda f: f.write(json.dumps(plain(payload), indent=2, default=str)))


__all__ = ["SCHEMAS", "schema_id", "plain", "digest", "provenance", "write", "read", "frame", "write_json"]
