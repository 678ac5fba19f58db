"""Run settings: one frozen dataclass, three profiles, and the run-directory layout.

A profile is a coherent set of defaults (``smoke`` for tests, ``demo`` for the README's main
command, ``full`` for paper scale on a GPU). Every knob can be overridden one by one; ``None``
means "take the profile's value". The resolved settings are written to ``run.json`` in the run
directory, and later notebooks read them from there.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .paths import data_dir

EMBEDDED_MODEL = "embedded"


@dataclass(frozen=True)
class RunConfig:
    """Everything that decides what a run computes."""

    profile: str
    run_dir: str
    model: str = EMBEDDED_MODEL  # "embedded" | local HF folder | hub id
    corpus: str = "stdlib"  # "stdlib" | "stdlib+code" | "textdir:PATH" | "hf:NAME[:SPLIT]"
    hook: str = "model.layers.8"  # module path in the HF model; its output is cached
    sae: str = "train"  # "train" | SAE folder (sae-lens or sparsify) | "sae-lens:RELEASE/SAE_ID"
    sae_width: int = 2048
    sae_k: int = 32
    train_tokens: int = 200_000
    train_batch_tokens: int = 512
    ctx_len: int = 128
    n_tokens: int = 200_000
    batch_size: int = 16
    shard_rows: int = 256
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def path(self) -> "RunDir":
        return RunDir(Path(self.run_dir))


PROFILES: dict[str, dict[str, Any]] = {
    # What the tests run: every notebook in minutes on 2 cores; numbers mean little.
    "smoke": dict(sae_width=512, sae_k=16, train_tokens=16_384, train_batch_tokens=256,
                  ctx_len=64, n_tokens=8_192, batch_size=16, shard_rows=32),
    # The README's main command: a 2-core laptop, big enough that the figures mean something.
    "demo": dict(sae_width=2048, sae_k=32, train_tokens=200_000, train_batch_tokens=512,
                 ctx_len=128, n_tokens=200_000, batch_size=16, shard_rows=256),
    # Paper scale: a GPU, a hub model and a pretrained SAE (change model/sae/hook to taste).
    "full": dict(model="google/gemma-2-9b", hook="model.layers.32",
                 sae="sae-lens:gemma-scope-9b-pt-res-canonical/layer_32/width_131k/canonical",
                 corpus="hf:EleutherAI/fineweb-edu-dedup-10b:train", sae_width=131072, sae_k=64,
                 ctx_len=256, n_tokens=10_000_000, batch_size=32, shard_rows=4096,
                 device="cuda", dtype="bfloat16"),
}


def resolve(profile: str = "demo", run_dir: str | os.PathLike | None = None,
            **overrides: Any) -> RunConfig:
    """Profile defaults, then every override that is not None; validated."""
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)}.")
    known = {f.name for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown}; known settings: {sorted(known)}.")
    values: dict[str, Any] = dict(PROFILES[profile])
    values.update({k: v for k, v in overrides.items() if v is not None})
    if run_dir is None:
        run_dir = data_dir() / "runs" / profile
    cfg = RunConfig(profile=profile, run_dir=str(Path(run_dir).resolve()), **values)
    _validate(cfg)
    return cfg


def _validate(cfg: RunConfig) -> None:
    for name in ("sae_width", "ctx_len", "n_tokens", "batch_size", "shard_rows", "train_tokens"):
        if getattr(cfg, name) <= 0:
            raise ValueError(f"{name} must be positive, got {getattr(cfg, name)}.")
    if cfg.n_tokens < cfg.ctx_len:
        raise ValueError(f"n_tokens ({cfg.n_tokens}) must be at least ctx_len ({cfg.ctx_len}).")


@dataclass(frozen=True)
class RunDir:
    """The layout of one run directory; every stage reads and writes here."""

    root: Path
    config_file: Path = field(init=False)
    sae_dir: Path = field(init=False)
    cache_dir: Path = field(init=False)
    notebooks_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "config_file", self.root / "run.json")
        object.__setattr__(self, "sae_dir", self.root / "sae")
        object.__setattr__(self, "cache_dir", self.root / "cache")
        object.__setattr__(self, "notebooks_dir", self.root / "notebooks")


def save(cfg: RunConfig, provenance: dict[str, Any] | None = None) -> Path:
    """Write run.json (settings + provenance); an existing run.json with other settings is an error."""
    rd = cfg.path
    rd.root.mkdir(parents=True, exist_ok=True)
    if rd.config_file.exists():
        old = json.loads(rd.config_file.read_text())["config"]
        changed = {k: (old.get(k), v) for k, v in cfg.to_dict().items()
                   if k in _STAGE0_KEYS and old.get(k) != v}
        if changed and (rd.sae_dir.exists() or rd.cache_dir.exists()):
            raise ValueError(
                f"Run directory {rd.root} already holds results made with other settings "
                f"{changed} (old, new). Use a new run_dir, or delete that folder to start over."
            )
    return write_json(rd.config_file, {"config": cfg.to_dict(), "provenance": provenance or {}})


# Settings that decide the SAE and the cache: changing them invalidates what a run dir holds.
_STAGE0_KEYS = ("model", "corpus", "hook", "sae", "sae_width", "sae_k", "train_tokens",
                "ctx_len", "seed")


def load(run_dir: str | os.PathLike, **overrides: Any) -> RunConfig:
    """Read run.json written by notebook 00; later stages may override their own knobs."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise FileNotFoundError(
            f"No run.json in {Path(run_dir).resolve()}: run notebooks/00_setup.ipynb with this "
            "run_dir first (or `make demo`)."
        )
    values = json.loads(path.read_text())["config"]
    bad = sorted(set(overrides) & set(_STAGE0_KEYS))
    if bad:
        raise ValueError(f"{bad} are fixed by notebook 00 for this run dir; start a new run_dir to change them.")
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["run_dir"] = str(Path(run_dir).resolve())
    cfg = RunConfig(**values)
    _validate(cfg)
    return cfg


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


def write_json(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write JSON atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)
    return path
