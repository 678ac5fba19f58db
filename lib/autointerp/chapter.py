"""A chapter's preamble in one call: its settings, run directory, subject model and inputs.

    ch = ai.chapter.open("surprisal", profile, run_dir, seed=seed, n_latents=n_latents, ...)
    ch.cfg, ch.rundir, ch.settings, ch.seed, ch.subject, ch.inputs

``section`` names the chapter's part of the settings table (``config.SETTINGS``); keyword
arguments are that section's knobs (None: the profile's value). What is loaded is what the
chapter asks for: the subject model (always), the SAE, the cache reader, and the scorer inputs
(``scoring.load_inputs``, for the scoring chapters).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import config
from .rundir import RunDir

SCORING_SECTIONS = ("surprisal", "embedding", "detection", "fuzzing", "simulation")


@dataclass
class Chapter:
    """What a chapter works with; ``decode`` turns token ids into token strings."""

    section: str
    cfg: config.RunConfig
    settings: dict[str, Any]
    seed: int
    subject: Any = None
    sae: Any = None
    reader: Any = None
    inputs: Any = None  # scoring.ScoringInputs (scoring chapters)
    decode: Any = None

    @property
    def rundir(self) -> RunDir:
        return self.cfg.path

    def inputs_table(self):
        """Per scored latent: which explainer wrote its explanation, the text, examples used."""
        import pandas as pd

        ins = self.inputs
        return pd.DataFrame({
            "explainer": ins.explainer, "explanation": ins.explanations,
            "examples (act + neg)": {k: f"{sum(e.label for e in v)} + {sum(not e.label for e in v)}"
                                     for k, v in ins.examples.items()}}).rename_axis("latent")


def open(section: str, profile: str, run_dir: str | Path | None = None, *, seed: int | None = None,
         sae: bool = False, cache: bool = False, explainer: str | None = None,
         **knobs: Any) -> Chapter:
    """The chapter's settings (``config.settings(section, profile, **knobs)``) for the run in
    ``run_dir`` (None: ``data/runs/<profile>``), its seed (None: the run's), the subject model,
    and on request the SAE (``sae=True``), the cache reader (``cache=True``) and, for a scoring
    section, the scorer inputs (``explainer``: "auto" or an explainer name)."""
    from . import examples, models, saes, widgets
    from .paths import data_dir

    widgets.plotly_offline()  # figures carry plotly.js: an exported chapter draws them offline
    run_dir = Path(run_dir) if run_dir else data_dir() / "runs" / profile
    cfg = config.load(run_dir)
    settings = config.settings(section, profile, **knobs)
    ch = Chapter(section, cfg, settings, cfg.seed if seed is None else int(seed))
    ch.subject = models.for_run(cfg)
    ch.decode = examples.TokenDecoder(ch.subject.tokenizer)
    if sae:
        ch.sae = saes.load(cfg.sae_spec, device=cfg.device, dtype=cfg.dtype)
    if cache:
        from .cache import CacheReader

        ch.reader = CacheReader(cfg.path.require("cache"))
    if section in SCORING_SECTIONS:
        from .scoring import load_inputs

        ch.inputs = load_inputs(cfg.run_dir, explainer=explainer or "auto",
                                n_latents=settings.get("n_latents"), n_pos=settings.get("n_pos"),
                                n_neg=settings.get("n_neg"))
    return ch


__all__ = ["Chapter", "open", "SCORING_SECTIONS"]
