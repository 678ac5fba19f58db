"""Per-latent completion records: a killed stage resumes where it stopped.

A stage that works latent by latent (in chunks) writes one small JSON file per finished latent
under ``<run>/progress/<stage>/<fingerprint>/``, atomically (temporary file, then rename), so a
kill leaves either a whole record or none. The fingerprint is a digest of everything the results
depend on (the scorer and its settings, the explanations, the examples, the seed): a rerun with
the same inputs reads the finished latents back and computes only the rest; changed inputs get a
fresh folder and nothing stale is reused. A latent some of whose LLM calls failed (retries spent,
a spending cap, a dry run) is not recorded, so the rerun asks again.
"""
from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from . import results
from .metrics import LatentMetrics, QuantilePoint
from .records import ScoredExample, ScorerResult


# reasons a result's examples failed that a rerun may fix: the call itself did not come back
# (``LLMClient``'s errors), as opposed to an answer that came back and did not parse
CALL_FAILURES = ("failed after", "spending cap", "dry run")


def settled(result: ScorerResult | None) -> bool:
    """True when nothing in ``result`` waits for a call that failed: then it is final."""
    return result is None or not any(str(f.get("reason", "")).startswith(CALL_FAILURES)
                                     for f in (result.usage or {}).get("failures", []))


class Progress:
    """The finished latents of one stage run on one set of inputs."""

    def __init__(self, root: str | Path, stage: str, inputs: Any) -> None:
        self.fingerprint = results.digest(inputs)
        self.dir = Path(root) / stage / self.fingerprint

    def _path(self, key: str) -> Path:
        return self.dir / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except ValueError:  # not written by put (which is atomic): treat as not done
            return None

    def put(self, key: str, record: dict[str, Any]) -> None:
        results.write_json(self._path(key), record)

    def done(self, keys) -> list[str]:
        return [k for k in keys if self._path(k).is_file()]


def recorded(prog: Progress | None, key: str, compute: Callable[[], ScorerResult | None]) -> ScorerResult | None:
    """``compute()``'s result (or None), kept in ``prog`` under ``key``; the one kept earlier when
    there is one. It goes through its JSON form either way, so a resumed run equals a fresh one.
    For computations without LLM calls (nothing in them can fail and be worth asking again)."""
    rec = prog.get(key) if prog is not None else None
    if rec is None:
        r = compute()
        rec = {"result": None if r is None else results.plain(r)}
        if prog is not None:
            prog.put(key, rec)
    return None if rec["result"] is None else result_from(rec["result"])


def _floats(cls, d: dict[str, Any]) -> dict[str, Any]:
    """None back to NaN in a dataclass's float fields (``results.plain`` writes NaN as null)."""
    out = dict(d)
    for f in fields(cls):
        if f.type in ("float", float) and out.get(f.name) is None:
            out[f.name] = math.nan
    return out


def result_from(d: dict[str, Any]) -> ScorerResult:
    """A ``ScorerResult`` back from its plain JSON form (what ``results.plain`` wrote)."""
    m = dict(d["metrics"])
    m["by_quantile"] = tuple(QuantilePoint(**_floats(QuantilePoint, q)) for q in m.get("by_quantile", ()))
    return ScorerResult(d["latent"], d["scorer"], d["explanation"],
                        tuple(ScoredExample(**e) for e in d["examples"]),
                        LatentMetrics(**_floats(LatentMetrics, m)), d.get("control"), d.get("usage") or {},
                        d.get("details") or {})


__all__ = ["Progress", "recorded", "result_from", "settled", "CALL_FAILURES"]
