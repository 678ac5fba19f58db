"""The layout of a run directory: every artifact path of every stage, defined once.

    <run_dir>/
      run.json                      settings + provenance (00_setup)
      sae/                          the trained SAE, sae-lens format (00_setup)
      cache/                        tokens, sparse shards, index, stats, summary.json (01_caching)
      examples.jsonl                example windows per latent (02_explaining)
      explanations.jsonl            explanations per latent and explainer (02_explaining)
      llm_cache/                    every LLM response, by request hash (02-04)
      planted/t<tokens>_s<seed>/    planted latents of known meaning (03-06)
      scores/<name>.jsonl           one scorer's results (03-07)
      progress/<scorer>/<inputs>/   per-latent completion records: a killed scorer resumes (03-06)
      scores/<name>_validity.jsonl  its planted-latent exam (03-06)
      variants/<name>/              a baseline through the same pipeline, this layout again (08)
      layers/<name>/                SAEs at adjacent layers, a twin and a narrow one, sae-lens format (09)
      findings.json                 the paper's claims from this run, and its watched numbers (11)
      export/features.jsonl         the Neuronpedia-style feature export (12)
      report.html                   the run as one self-contained HTML file (12, python -m autointerp.report)
      notebooks/                    the executed chapters (the runner)

``RunDir.require(name)`` returns an input's path, or raises "run chapter NN first".
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# artifact -> (path inside the run dir, the chapter that writes it)
ARTIFACTS: dict[str, tuple[str, str]] = {
    "config": ("run.json", "00_setup"),
    "sae": ("sae", "00_setup"),
    "cache": ("cache", "01_caching"),
    "cache_summary": ("cache/summary.json", "01_caching"),
    "examples": ("examples.jsonl", "02_explaining"),
    "explanations": ("explanations.jsonl", "02_explaining"),
    "llm_cache": ("llm_cache", "02_explaining"),
    "planted": ("planted", "03_detection"),
    "scores": ("scores", "03_detection"),
    "progress": ("progress", "03_detection"),
    "variants": ("variants", "08_neurons"),
    "layers": ("layers", "09_alignment"),
    "findings": ("findings.json", "11_findings"),
    "export": ("export", "12_lab"),
    "report": ("report.html", "12_lab"),
    "notebooks": ("notebooks", "the runner (python -m autointerp.run)"),
}


# chapter -> the files it leaves in a run directory when it has finished (``verify``, the tests)
STAGES: dict[str, tuple[str, ...]] = {
    "00_setup": ("run.json", "sae/cfg.json", "sae/sae_weights.safetensors", "sae/train_report.json"),
    "01_caching": ("cache/tokens.npy", "cache/index/ptr.npy", "cache/stats.npz", "cache/summary.json"),
    "02_explaining": ("examples.jsonl", "explanations.jsonl"),
    "03_detection": ("scores/detection.jsonl", "scores/detection_validity.jsonl", "scores/intruder.jsonl",
                     "scores/intruder_embedding.jsonl"),
    "04_fuzzing": ("scores/fuzzing.jsonl", "scores/fuzzing_active.jsonl", "scores/simulation.jsonl"),
    "05_surprisal": ("scores/surprisal.jsonl", "scores/surprisal_validity.jsonl"),
    "06_embedding": ("scores/embedding.jsonl", "scores/embedding_validity.jsonl"),
    "07_intervention": ("scores/intervention.jsonl",),
    "08_neurons": ("scores/baselines.jsonl", "variants/sae/scores/embedding.jsonl",
                   "variants/neurons/scores/embedding.jsonl"),
    "09_alignment": ("scores/alignment.jsonl", "layers"),
    "10_selection": ("scores/selection.jsonl",),
    "11_findings": ("findings.json",),
    "12_lab": ("report.html", "export/features.jsonl"),
}


class MissingArtifact(FileNotFoundError):
    """A stage's input is not in the run directory yet."""


@dataclass(frozen=True)
class RunDir:
    """One run directory; every stage reads and writes through these paths."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def path(self, name: str) -> Path:
        """The path of an artifact (see ``ARTIFACTS``)."""
        if name not in ARTIFACTS:
            raise KeyError(f"Unknown artifact {name!r}; known: {sorted(ARTIFACTS)}.")
        return self.root / ARTIFACTS[name][0]

    def require(self, name: str) -> Path:
        """The path of an input that must exist, else "run chapter NN first"."""
        path = self.path(name)
        if not path.exists():
            rel, chapter = ARTIFACTS[name]
            how = chapter if chapter.startswith("the ") else f"notebooks/{chapter}.ipynb"
            raise MissingArtifact(f"No {rel} in {self.root.resolve()}: run {how} for this run dir "
                                  "first (or `make demo`).")
        return path

    # the artifacts every chapter uses, by name
    config_file = property(lambda self: self.path("config"))
    sae_dir = property(lambda self: self.path("sae"))
    cache_dir = property(lambda self: self.path("cache"))
    cache_summary = property(lambda self: self.path("cache_summary"))
    examples = property(lambda self: self.path("examples"))
    explanations = property(lambda self: self.path("explanations"))
    llm_cache = property(lambda self: self.path("llm_cache"))
    scores_dir = property(lambda self: self.path("scores"))
    notebooks_dir = property(lambda self: self.path("notebooks"))
    progress_dir = property(lambda self: self.path("progress"))

    def scores(self, name: str) -> Path:
        """``scores/<name>.jsonl``: one scorer's (or one condition set's) results."""
        return self.scores_dir / f"{name}.jsonl"

    def validity(self, name: str) -> Path:
        """``scores/<name>_validity.jsonl``: that scorer's planted-latent exam."""
        return self.scores_dir / f"{name}_validity.jsonl"

    def variant(self, name: str) -> RunDir:
        """``variants/<name>``: a baseline's own run directory (same layout)."""
        return RunDir(self.path("variants") / name)

    def planted(self, n_tokens: int, seed: int) -> Path:
        """``planted/t<n_tokens>_s<seed>``: planted latents built on that many corpus tokens."""
        return self.path("planted") / f"t{int(n_tokens)}_s{int(seed)}"


__all__ = ["ARTIFACTS", "STAGES", "RunDir", "MissingArtifact"]
