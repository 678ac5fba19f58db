"""Settings: THE table of every stage's profile defaults, one resolver, and the run's config.

A profile is a coherent set of defaults (``smoke`` for tests, ``demo`` for the README's main
command, ``full`` for paper scale on a GPU, ``mini`` for the full profile's formats at smoke sizes). Every knob can be overridden one by one; ``None``
means "take the profile's value". ``settings(section, profile, **overrides)`` resolves one stage;
``python -m autointerp.config --profile demo`` prints every stage's resolved settings. The run's
own settings (``RunConfig``: model, corpus, hook, SAE, cache) are written to ``run.json`` by
notebook 00, and later notebooks read them from there.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .paths import data_dir
from .results import write_json
from .rundir import RunDir

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
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N" | "auto" (the model's layers spread over every GPU)
    dtype: str = "float32"
    remote: bool = False  # run the model's traces on NDIF (nnsight remote; key in NDIF_API_KEY)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def path(self) -> RunDir:
        return RunDir(Path(self.run_dir))

    @property
    def sae_spec(self) -> str:
        """What ``saes.load`` takes for this run: the run's own SAE folder when it trained one."""
        return str(self.path.sae_dir) if self.sae == "train" else self.sae


PROFILE_NAMES = ("smoke", "demo", "full", "mini")
# A profile may start from another's values (then its own entries override them): ``mini`` is the
# full profile's shape at smoke sizes (a local HF-folder model, a loaded SAE, bfloat16, loaded SAE
# sources in chapters 08/09, surprisal among the baselines' scorers, judges only after their exam)
# for running every chapter on the full profile's formats in minutes: the tests give it a random
# Gemma-2 folder and a Gemma Scope JumpReLU SAE (``autointerp.synthetic``).
BASE_PROFILE = {"mini": "smoke"}
# the LLM-judge chapters' sizes (03 detection, 04 fuzzing): latents, excerpts, planted exam
_JUDGE: dict[str, dict[str, Any]] = {
    "smoke": dict(n_latents=3, n_pos=2, n_neg=2, planted_latents=3, planted_examples=2),
    "demo": dict(n_latents=5, n_pos=3, n_neg=3, planted_latents=5, planted_examples=2),
    "full": dict(planted_latents=8, planted_examples=20),
    # mini runs the judges' code on the full profile's formats; the LLM calls are smoke's, fewer
    "mini": dict(n_latents=3, n_pos=1, n_neg=1, planted_latents=2, planted_examples=1),
}

# THE settings table: every profile default of every stage and scorer, a section per stage.
# In each section "all" holds what every profile shares, then one entry per profile overrides it;
# a scorer section also inherits the "scoring" section (``PARENT``). ``settings(section, profile,
# **overrides)`` resolves one section; ``python -m autointerp.config --profile demo`` prints all.
# smoke: what the tests run (every notebook in minutes on 2 cores; numbers mean little).
# demo: the README's main command (a 2-core laptop, big enough that the figures mean something).
# full: paper scale (a GPU, a hub model and a pretrained SAE; change model/sae/hook to taste).
SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    # notebook 00/01: subject model, corpus, SAE and cache (RunConfig; saved in run.json)
    "run": {
        "smoke": dict(sae_width=512, sae_k=16, train_tokens=16_384, train_batch_tokens=256,
                      ctx_len=64, n_tokens=8_192, batch_size=16, shard_rows=32),
        "demo": dict(sae_width=2048, sae_k=32, train_tokens=200_000, train_batch_tokens=512,
                     ctx_len=128, n_tokens=200_000, batch_size=16, shard_rows=256),
        "full": dict(model="google/gemma-2-9b", hook="model.layers.32",
                     sae="sae-lens:gemma-scope-9b-pt-res-canonical/layer_32/width_131k/canonical",
                     corpus="hf:EleutherAI/fineweb-edu-dedup-10b:train", sae_width=131072, sae_k=64,
                     ctx_len=256, n_tokens=10_000_000, batch_size=32, shard_rows=4096,
                     device="cuda", dtype="bfloat16"),
        # model and sae: pass a local HF folder and an SAE folder (the tests: autointerp.synthetic)
        "mini": dict(dtype="bfloat16", n_tokens=32_768),
    },
    # notebook 02: example windows (examples.ExampleSettings; smoke has ~250 windows per latent
    # at most, and the 135M local explainer reads short prompts best; full is the reference)
    "examples": {
        "smoke": dict(n_quantiles=4, train_per_quantile=2, test_per_quantile=3, min_examples=20),
        "demo": dict(n_quantiles=10, train_per_quantile=2, test_per_quantile=5, min_examples=100),
        "full": dict(n_quantiles=10, train_per_quantile=4, test_per_quantile=5, min_examples=200),
    },
    # notebook 02: explainers (latents to explain, reply budget of the LLM explainers)
    "explain": {
        "smoke": dict(n_latents=4, max_tokens=48),
        "demo": dict(n_latents=10, max_tokens=64),
        "full": dict(n_latents=200, max_tokens=200),
        "mini": dict(n_latents=3),
    },
    # notebooks 03-06, shared: latents to score, test examples per latent, planted-control size
    "scoring": {
        "smoke": dict(n_latents=4, n_pos=10, n_neg=10, planted_tokens=4096, planted_examples=10),
        "demo": dict(n_latents=16, n_pos=25, n_neg=25, planted_tokens=16384, planted_examples=20),
        "full": dict(n_latents=200, n_pos=50, n_neg=50, planted_tokens=65536, planted_examples=50),
    },
    # Slow scorers (an LM forward per example and condition) take fewer examples on small profiles.
    "surprisal": {
        "smoke": dict(n_pos=6, n_neg=6, planted_examples=8),
        "demo": dict(n_latents=8, n_pos=15, n_neg=15, planted_examples=12),
    },
    "embedding": {},
    # LLM judges cost one call per example on an endpoint that cannot answer lists (the embedded
    # model), ~1.5-3 s each on 2 cores: the demo keeps the 5 latents a claim needs
    # (metrics.MIN_LATENTS_FOR_CLAIM) and few excerpts; a real endpoint with the full profile uses
    # the reference's sizes. n_trials: intruder trials per latent (chapter 03).
    "detection": {p: {**_JUDGE[p], "n_trials": n} for p, n in (("smoke", 1), ("demo", 1), ("full", 10), ("mini", 1))},
    "fuzzing": _JUDGE,
    "simulation": {
        "smoke": dict(n_latents=2, n_pos=1, n_neg=1, planted_latents=2, planted_examples=1),
        "demo": dict(n_latents=5, n_pos=1, n_neg=1, planted_latents=5, planted_examples=1),
        "full": dict(n_latents=100, n_pos=10, n_neg=10, planted_latents=8, planted_examples=10),
    },
    # notebook 10: best-of-k and refinement. n_latents of chapter 02's latents; k samples each of the
    # chat and the completion explainer at T > 0 (chapter 02's explanations join as candidates);
    # test examples per latent (split in half: selection / held-out); refinement rounds; the scorer
    # that selects (any name scoring.make_scorers knows)
    "selection": {
        "all": dict(scorer="embedding", sample_temperature=0.8),
        "smoke": dict(n_latents=3, k=2, n_pos=10, n_neg=10, rounds=1, max_tokens=48),
        "demo": dict(n_latents=6, k=2, n_pos=20, n_neg=20, rounds=1, max_tokens=64),
        "full": dict(n_latents=100, k=5, n_pos=50, n_neg=50, rounds=3, max_tokens=200),
        "mini": dict(n_latents=2, k=1),
    },
    # notebook 12 (the lab): examples per quantile on a feature page, steering prompts and sampled
    # tokens (the report and the export cover the latents the run explained or scored)
    "lab": {
        "all": dict(per_quantile=2, target_kl=0.5),
        "smoke": dict(n_prompts=2, gen_tokens=4),
        "demo": dict(n_prompts=3, gen_tokens=8),
        "full": dict(n_prompts=5, gen_tokens=12),
    },
    # notebook 08: every baseline re-cached on the same rows (n_tokens), n_latents per variant,
    # test examples per latent, latents firing on at most max_rate of tokens (0.2: an SAE trained on
    # a random-init model has row-level latents that fire densely), and the scorers run on each:
    # `scorers` always (surprisal is an LM forward per example and condition: full only); the judges
    # (an LLM call per excerpt) on judge_latents latents with judge_examples of each kind, and only
    # when their planted exam on this run passed ("exam passed"; smoke runs them "always" so the
    # test run covers them); intervention steers `steer` latents per variant (steering.run_all sizes).
    # sources: variant -> an SAE to load instead of training one ({layer}: the run's layer); the full
    # profile takes Gemma Scope's 16k residual SAE (the narrower one) and its 131k MLP-output SAE
    "baselines": {
        "all": dict(max_rate=0.2, judges=("detection", "fuzzing"), judges_when="exam passed", sources={}),
        # train_tokens: the trained variants' budget (None: the run SAE's; otherwise the run's SAE is
        # retrained on it beside them, so every trained variant has the same budget)
        "smoke": dict(n_tokens=8_192, n_latents=8, n_pos=10, n_neg=10, scorers=("embedding", "intervention"),
                      train_tokens=8_192, judges=("detection",), judges_when="always", judge_latents=2,
                      judge_examples=1,
                      steer=dict(n_latents=3, n_prompts=3, max_len=24, gen_tokens=4, calibration_steps=8)),
        "demo": dict(n_tokens=32_768, n_latents=16, n_pos=20, n_neg=20, scorers=("embedding", "intervention"),
                     train_tokens=65_536, judge_latents=5, judge_examples=3,
                     steer=dict(n_latents=5, n_prompts=4, max_len=32, gen_tokens=6, calibration_steps=10)),
        "full": dict(n_tokens=2_000_000, n_latents=200, n_pos=50, n_neg=50,
                     scorers=("embedding", "surprisal", "intervention"), train_tokens=None, judge_latents=200,
                     judge_examples=50,
                     sources=dict(narrow="sae-lens:gemma-scope-9b-pt-res-canonical/layer_{layer}/width_16k/canonical",
                                  mlp="sae-lens:gemma-scope-9b-pt-mlp-canonical/layer_{layer}/width_131k/canonical"),
                     steer=dict(n_latents=100, n_prompts=20, max_len=None, gen_tokens=8, calibration_steps=14)),
        # sources: pass {"narrow": ..., "mlp": ...} SAE folders ({layer} filled in), as full takes releases
        "mini": dict(n_tokens=32_768, n_latents=4, scorers=("embedding", "surprisal", "intervention"),
                     judges=("detection", "fuzzing"), judges_when="exam passed", train_tokens=None,
                     steer=dict(n_latents=2, n_prompts=3, max_len=24, gen_tokens=4, calibration_steps=8)),
    },
    # notebook 09: the SAE family (residual + MLP at n_layers adjacent layers, a twin, a narrow
    # one), trained together on train_tokens; rows for the token-list explanations of matched pairs
    # sources: family kind ("resid", "mlp") or name ("twin", "narrow") -> an SAE to load instead of
    # training ({layer} filled in); the full profile takes Gemma Scope's 16k SAEs, and trains only
    # the twin (no release has two seeds) and the narrow one (no release is narrower than 16k)
    "alignment": {
        "all": dict(sources={}),
        "smoke": dict(width=128, train_tokens=8_192, n_layers=4, agreement_rows=64),
        "demo": dict(width=1024, train_tokens=32_768, n_layers=4, agreement_rows=256),
        "full": dict(width=16_384, train_tokens=2_000_000, n_layers=4, agreement_rows=2048,
                     sources=dict(resid="sae-lens:gemma-scope-9b-pt-res-canonical/layer_{layer}/width_16k/canonical",
                                  mlp="sae-lens:gemma-scope-9b-pt-mlp-canonical/layer_{layer}/width_16k/canonical")),
    },
    # notebook 07: latents, prompts per latent, prompt length cap, generated tokens, calibration
    # forwards, rows of the corpus the random SAE's prompts come from
    "intervention": {
        "smoke": dict(n_latents=2, n_prompts=3, max_len=24, gen_tokens=4, calibration_steps=8, random_rows=32,
                      known_words=3),
        "demo": dict(n_latents=6, n_prompts=6, max_len=48, gen_tokens=8, calibration_steps=14, random_rows=96,
                     known_words=6),
        "full": dict(n_latents=100, n_prompts=20, max_len=None, gen_tokens=8, calibration_steps=14,
                     random_rows=2048, known_words=12),
    },
}
PARENT = {"surprisal": "scoring", "embedding": "scoring", "detection": "scoring",
          "fuzzing": "scoring", "simulation": "scoring"}
# Sections whose keys are a dataclass's fields (the dataclass holds the reference defaults).
_SCHEMA = {"run": "autointerp.config:RunConfig", "examples": "autointerp.examples:ExampleSettings"}


def _schema(section: str):
    if section not in _SCHEMA:
        return None
    import importlib

    mod, name = _SCHEMA[section].split(":")
    return getattr(importlib.import_module(mod), name)


def _check_profile(profile: str) -> None:
    if profile not in PROFILE_NAMES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {list(PROFILE_NAMES)}.")


def known_settings(section: str) -> list[str]:
    """Every setting a section knows (its table keys and, for dataclass sections, the fields)."""
    if section not in SETTINGS:
        raise ValueError(f"Unknown settings section {section!r}; sections: {list(SETTINGS)}.")
    keys = {k for s in (PARENT.get(section), section) if s for p in SETTINGS[s].values() for k in p}
    schema = _schema(section)
    if schema is not None:
        keys |= {f.name for f in dataclasses.fields(schema)} - {"profile", "run_dir"}
    return sorted(keys)


def settings(section: str, profile: str, **overrides: Any) -> dict[str, Any]:
    """One section's settings for a profile: its parent's ("scoring" for a scorer), then its own
    ("all", then the base profile's if it has one, then the profile's), then every override that is
    not None. Unknown names are an error."""
    _check_profile(profile)
    known = known_settings(section)
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise ValueError(f"Unknown setting(s) {unknown} for {section}; known: {known}.")
    chain = [p for p in (BASE_PROFILE.get(profile), profile) if p]
    out: dict[str, Any] = {}
    for s in (PARENT.get(section), section):
        if s:
            out.update(SETTINGS[s].get("all", {}))
            for p in chain:
                out.update(SETTINGS[s].get(p, {}))
    out.update({k: v for k, v in overrides.items() if v is not None})
    return out


def resolved(profile: str) -> dict[str, dict[str, Any]]:
    """Every section fully resolved for a profile (dataclass defaults included): what it means."""
    out = {}
    for section in SETTINGS:
        values = settings(section, profile)
        schema = _schema(section)
        if schema is not None:
            defaults = {f.name: f.default for f in dataclasses.fields(schema)
                        if f.default is not dataclasses.MISSING and f.name not in ("profile", "run_dir")}
            values = {**defaults, **values}
        out[section] = values
    return out


def resolve(profile: str = "demo", run_dir: str | os.PathLike | None = None,
            **overrides: Any) -> RunConfig:
    """Profile defaults, then every override that is not None; validated."""
    values = settings("run", profile, **overrides)
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
    path = RunDir(Path(run_dir)).require("config")
    values = json.loads(path.read_text())["config"]
    bad = sorted(set(overrides) & set(_STAGE0_KEYS))
    if bad:
        raise ValueError(f"{bad} are fixed by notebook 00 for this run dir; start a new run_dir to change them.")
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["run_dir"] = str(Path(run_dir).resolve())
    cfg = RunConfig(**values)
    _validate(cfg)
    return cfg


def main(argv: list[str] | None = None) -> int:
    """``python -m autointerp.config --profile demo``: every section's resolved settings."""
    import argparse

    ap = argparse.ArgumentParser(description="Print the resolved settings of every stage for a profile.")
    ap.add_argument("--profile", default="demo", choices=PROFILE_NAMES)
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    table = resolved(args.profile)
    if args.json:
        print(json.dumps(table, indent=2, default=str))
        return 0
    print(f"Profile {args.profile!r} (None means: not set / the stage's own default)")
    for section, values in table.items():
        parent = f" (inherits {PARENT[section]})" if section in PARENT else ""
        print(f"\n[{section}]{parent}")
        for k, v in values.items():
            print(f"  {k:<22} {v!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
