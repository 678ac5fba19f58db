"""A latent's facts from a run directory, gathered in one place: what the dashboard, the HTML report
and the Neuronpedia-style export show (chapter 12).

    lab = ai.lab.open(run_dir)           # reads the run; the model and SAE load on first need
    f = lab.feature(17)                  # a Feature: rates, explanations, scores + controls, ...
    lab.search("file paths")             # latents whose explanations mean that (MiniLM)
    lab.interesting()                    # latents worth a look, with the reason
    lab.fire_on("some text")             # which latents fire on your own text, token by token
    lab.steer(17, target_kl=0.5)         # clean and steered continuations, next-token KL

Everything comes from files the chapters wrote (``rundir.RunDir``); nothing is recomputed that a
chapter already measured, and a fact a run does not have yet is empty, never invented.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from . import config, results
from .records import Explanation, Window
from .rundir import RunDir

PER_LATENT_SKIP = {"alignment", "baselines", "selection"}  # scores/ files that are not per latent
CONTROLS = ("shuffled", "mixed")  # the control a score is shown beside, first found
N_BINS = 40


@dataclass(frozen=True)
class Score:
    """One scorer's score of one explanation of a latent, beside its control's."""

    scorer: str
    metric: str
    value: float
    control: float | None
    control_name: str | None
    explainer: str | None
    explanation: str

    @property
    def gap(self) -> float:
        return self.value - self.control if self.control is not None else math.nan


@dataclass(frozen=True)
class Feature:
    """Everything the run knows about one latent."""

    latent: int
    count: int
    firing_rate: float
    max_act: float
    mean_act: float
    explanations: tuple[Explanation, ...] = ()
    scores: tuple[Score, ...] = ()
    hist_edges: tuple[float, ...] = ()  # activation histogram over every token where it fires
    hist_counts: tuple[int, ...] = ()
    quantile_edges: tuple[float, ...] = ()  # window max at each quantile boundary, top first
    promoted: tuple[tuple[str, float], ...] = ()  # logit lens
    suppressed: tuple[tuple[str, float], ...] = ()
    examples: tuple[Window, ...] = ()  # the strongest windows of each quantile, top quantile first
    neighbours: tuple[tuple[int, float], ...] = ()  # nearest latents by decoder cosine
    matches: tuple[tuple[str, int, float, str], ...] = ()  # (SAE, latent, cosine, "matched"|"nearest")

    @property
    def explanation(self) -> str | None:
        """The first explanation that did not fail (chapter 02's preference order)."""
        return next((x.text for x in self.explanations if not x.failed and x.text), None)


@dataclass(frozen=True)
class OwnText:
    """Latent activations on a text the reader typed: ``acts[latent]`` has one value per token."""

    text: str
    tokens: tuple[str, ...]
    acts: dict[int, tuple[float, ...]]  # the latents that fire anywhere, strongest first

    def top(self, n: int = 10) -> list[tuple[int, float]]:
        return [(j, max(a)) for j, a in list(self.acts.items())[:n]]


@dataclass(frozen=True)
class Steering:
    """Clean and steered continuations of the same prompts, and the next-token KL it caused."""

    latent: int
    strength: float
    kl: float
    prompts: tuple[str, ...]
    clean: tuple[str, ...]
    steered: tuple[str, ...]
    target_kl: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def open(run_dir: str | Path, *, subject=None, device: str | None = None) -> Lab:  # noqa: A001 - ai.lab.open
    """The lab over one run directory (chapters 00-01 at least); ``subject``: the run's model if
    already loaded (else it loads on first need)."""
    return Lab(RunDir(Path(run_dir)), subject=subject, device=device)


class Lab:
    """Reads a run directory once and answers per-latent questions about it."""

    def __init__(self, rundir: RunDir, *, subject=None, device: str | None = None) -> None:
        from .cache import CacheReader

        self.rundir = rundir
        self.cfg = config.load(rundir.root)
        self.device = device or self.cfg.device
        self.reader = CacheReader(rundir.require("cache"))
        self.stats = self.reader.stats
        self._matches: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        if subject is not None:
            self.__dict__["subject"] = subject  # fills the cached property

    # -- what loads on first need ------------------------------------------------------------
    @cached_property
    def subject(self):
        from . import models

        return models.load(self.cfg.model, device=self.device, dtype=self.cfg.dtype, remote=self.cfg.remote)

    @cached_property
    def sae(self):
        from . import saes

        return saes.load(self.cfg.sae_spec, device=self.device, dtype=self.cfg.dtype)

    @cached_property
    def decode(self):
        from .examples import TokenDecoder

        return TokenDecoder(self.subject.tokenizer)

    @cached_property
    def decoder(self) -> np.ndarray:
        return self.sae.W_dec.detach().float().cpu().numpy()

    @cached_property
    def example_settings(self):
        from .examples import settings_for

        return settings_for(self.cfg.profile)

    @cached_property
    def examples(self) -> dict[int, Any]:
        from . import examples

        if not self.rundir.examples.exists():
            return {}
        return {x.latent: x for x in examples.load(self.rundir.examples)[1]}

    @cached_property
    def explanations(self) -> dict[int, tuple[Explanation, ...]]:
        from . import explanations

        if not self.rundir.explanations.exists():
            return {}
        by: dict[int, list[Explanation]] = {}
        for x in explanations.load_records(self.rundir.root)[1]:
            by.setdefault(x.latent, []).append(x)
        return {j: tuple(v) for j, v in by.items()}

    @cached_property
    def scores(self) -> dict[int, tuple[Score, ...]]:
        """Every per-latent score file under scores/, real explanations beside their control."""
        by: dict[int, list[Score]] = {}
        for path in sorted(self.rundir.scores_dir.glob("*.jsonl")) if self.rundir.scores_dir.exists() else ():
            if path.stem in PER_LATENT_SKIP or path.stem.endswith("_validity"):
                continue
            header, rows = results.read(path)
            metric = header.get("metric") or "auroc"
            rows = [r for r in rows if "latent" in r and not str(r.get("condition") or "").startswith("known")]
            ctrl = {(r["latent"], r.get("explainer"), r["control"]): r for r in rows if r.get("control")}
            for r in (r for r in rows if not r.get("control")):
                value = (r.get("metrics") or {}).get(metric)
                if value is None:
                    continue
                c = next(((name, ctrl[(r["latent"], r.get("explainer"), name)]) for name in CONTROLS
                          if (r["latent"], r.get("explainer"), name) in ctrl), (None, None))
                cval = None if c[1] is None else (c[1].get("metrics") or {}).get(metric)
                by.setdefault(int(r["latent"]), []).append(Score(
                    path.stem, metric, float(value), None if cval is None else float(cval),
                    c[0] if cval is not None else None, r.get("explainer"), r.get("explanation") or ""))
        return {j: tuple(v) for j, v in by.items()}

    # -- one latent ----------------------------------------------------------------------------
    def check_latent(self, j: int) -> int:
        if not 0 <= int(j) < self.reader.d_sae:
            raise IndexError(f"latent {j} out of range: this SAE has {self.reader.d_sae} latents (0-{self.reader.d_sae - 1}).")
        return int(j)

    def explanation(self, j: int) -> str:
        """Latent j's first explanation that did not fail ("" when none)."""
        return next((x.text for x in self.explanations.get(j, ()) if not x.failed and x.text), "")

    def latents(self) -> list[int]:
        """The latents the run explained or scored, then nothing else (the report's pages)."""
        return sorted(set(self.explanations) | set(self.scores))

    def histogram(self, j: int, n_bins: int = N_BINS) -> tuple[np.ndarray, np.ndarray]:
        """(edges, counts) of latent j's activation over every token where it fires."""
        vals = self.reader.latent(j)[1]
        if vals.size == 0:
            return np.zeros(0), np.zeros(0, np.int64)
        counts, edges = np.histogram(vals, bins=n_bins)
        return edges, counts

    def by_quantile(self, j: int, per_quantile: int = 2) -> tuple[tuple[Window, ...], tuple[float, ...]]:
        """The strongest ``per_quantile`` windows of each activation quantile, and the window max at
        each quantile's top (chapter 02's binning)."""
        from .examples import quantile_bins, windows_at, latent_windows

        s = self.example_settings
        table = latent_windows(self.reader, j, s)
        if not len(table):
            return (), ()
        q = quantile_bins(len(table), s.n_quantiles)
        firsts = [int(np.flatnonzero(q == b)[0]) for b in range(s.n_quantiles) if (q == b).any()]
        ranks = [r for f in firsts for r in range(f, f + per_quantile) if r < len(table) and q[r] == q[f]]
        return windows_at(self.reader, table, ranks, q), tuple(float(table.max_act[f]) for f in firsts)

    @cached_property
    def lens(self):
        from .explain import LogitLensExplainer

        return LogitLensExplainer.from_subject(self.subject, self.sae, k=10)

    def logit_lens(self, j: int) -> tuple[tuple, tuple]:
        """(promoted, suppressed): (token, logit) pairs of latent j's decoder direction (chapter 02's lens)."""
        up, down = self.lens.promoted_suppressed(j, self.decode)
        return tuple((t, v) for t, v, _ in up), tuple((t, v) for t, v, _ in down)

    def neighbours(self, j: int, n: int = 8) -> tuple[tuple[int, float], ...]:
        W = self.decoder / np.maximum(np.linalg.norm(self.decoder, axis=1, keepdims=True), 1e-12)
        cos = W @ W[j]
        cos[j] = -np.inf
        top = np.argsort(-cos, kind="stable")[:n]
        return tuple((int(k), round(float(cos[k]), 4)) for k in top)

    def matches(self, j: int) -> tuple[tuple[str, int, float, str], ...]:
        """Latent j in every other SAE of the run (chapter 09's family under layers/): its Hungarian
        match by decoder cosine ("matched"), or, where the other SAE is narrower and the matching
        left j out, its nearest latent there ("nearest"). Empty when chapter 09 has not run."""
        if self._matches is None:
            self._matches = self._match_family()
        w = self.decoder[j] / max(float(np.linalg.norm(self.decoder[j])), 1e-12)
        out = []
        for name, (col, sim, unit) in self._matches.items():
            if col[j] >= 0:
                out.append((name, int(col[j]), round(float(sim[j]), 4), "matched"))
            else:
                cos = unit @ w
                k = int(np.argmax(cos))
                out.append((name, k, round(float(cos[k]), 4), "nearest"))
        return tuple(out)

    def _match_family(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        from . import alignment, saes

        root = self.rundir.path("layers")
        out: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for d in sorted(p for p in root.glob("*") if (p / "cfg.json").exists()) if root.exists() else ():
            other = saes.load(str(d), device="cpu").W_dec.detach().float().numpy()
            if other.shape[1] != self.decoder.shape[1]:
                continue
            m = alignment.match(self.decoder, other, precision="float32", progress=False)
            col = np.full(len(self.decoder), -1, np.int64)
            sim = np.zeros(len(self.decoder), np.float32)
            col[m.rows], sim[m.rows] = m.cols, m.similarity
            out[d.name] = (col, sim, other / np.maximum(np.linalg.norm(other, axis=1, keepdims=True), 1e-12))
        return out

    def feature(self, j: int, *, per_quantile: int = 2, matches: bool = True) -> Feature:
        """Every fact of latent j the run has."""
        j = self.check_latent(j)
        st = self.stats
        edges, counts = self.histogram(j)
        wins, qedges = self.by_quantile(j, per_quantile)
        up, down = self.logit_lens(j)
        return Feature(j, int(st.count[j]), float(st.firing_rate[j]), float(st.max_act[j]), float(st.mean_act[j]),
                       self.explanations.get(j, ()), self.scores.get(j, ()),
                       tuple(float(e) for e in edges), tuple(int(c) for c in counts), qedges, up, down, wins,
                       self.neighbours(j), self.matches(j) if matches else ())

    # -- navigation ----------------------------------------------------------------------------
    def search(self, query: str, n: int = 5) -> list[tuple[int, float, str]]:
        """Latents whose explanations are closest in meaning to ``query`` (MiniLM cosine):
        (latent, cosine, explanation), best first; each latent once."""
        from .scorers.embedding import embed

        pairs = [(j, x.text) for j, xs in self.explanations.items() for x in xs if not x.failed and x.text]
        if not pairs or not query.strip():
            return []
        sims = embed([t for _, t in pairs]) @ embed([query.strip()])[0]
        best: dict[int, tuple[float, str]] = {}
        for (j, t), s in zip(pairs, sims.tolist()):
            if j not in best or s > best[j][0]:
                best[j] = (s, t)
        return sorted(((j, round(s, 4), t) for j, (s, t) in best.items()), key=lambda r: -r[1])[:n]

    def interesting(self) -> list[tuple[int, str]]:
        """Scored latents worth a look, most first: where an explanation beats its control by the
        most, and where the scorers disagree the most (AUROC scorers)."""
        rows = []
        for j, ss in self.scores.items():
            auc = [s for s in ss if s.metric == "auroc"]
            gaps = [s for s in auc if s.control is not None]
            if gaps:
                g = max(gaps, key=lambda s: s.gap)
                rows.append((g.gap, j, f"{g.scorer} beats its {g.control_name} control by {g.gap:+.2f} AUROC"))
            if len({s.scorer for s in auc}) >= 2:
                hi, lo = max(auc, key=lambda s: s.value), min(auc, key=lambda s: s.value)
                rows.append((hi.value - lo.value, j, f"scorers disagree: {hi.scorer} {hi.value:.2f} vs "
                                                     f"{lo.scorer} {lo.value:.2f}"))
        seen, out = set(), []
        for _, j, why in sorted(rows, key=lambda r: (-r[0], r[1])):
            if j not in seen:
                seen.add(j)
                out.append((j, why))
        return out

    def control_summary(self) -> str:
        """How often this run's explanations beat their controls, and whether that is above chance:
        the sentence every view of a score should be read against."""
        from scipy.stats import binomtest

        gaps = [s.gap for ss in self.scores.values() for s in ss if s.control is not None and s.gap == s.gap]
        if not gaps:
            return "No scores with a control yet (chapters 03-07 write them)."
        wins = sum(g > 0 for g in gaps)
        ties = sum(g == 0 for g in gaps)
        n = len(gaps) - ties
        p = binomtest(wins, n, 0.5, alternative="greater").pvalue if n else 1.0
        reading = ("more often than a coin would: some explanations carry signal" if p < 0.05 else
                   "no more often than a coin would: on this run a score is mechanics, not a finding "
                   "(the embedded 135M model is a weak explainer and judge)")
        return (f"Across {len(self.scores)} scored latents, the real explanation beats its control in {wins} of "
                f"{n} score pairs ({ties} ties left out; one-sided sign test p = {p:.2g}, if anything too small: the "
                f"pairs share latents): {reading}.")

    # -- the model at work ---------------------------------------------------------------------
    def fire_on(self, text: str, n_latents: int = 20) -> OwnText:
        """Encode ``text`` with the subject model and the SAE at the run's hook."""
        import torch

        from .cache import encode_batch

        if not text.strip():
            raise ValueError("Type some text to see which latents fire on it.")
        tok = self.subject.tokenizer
        ids = tok(text, return_tensors="pt")["input_ids"][:, :self.cfg.ctx_len]
        if tok.bos_token_id is not None and int(ids[0, 0]) != tok.bos_token_id:
            ids = torch.cat([torch.tensor([[tok.bos_token_id]]), ids], 1)[:, :self.cfg.ctx_len]
        acts = encode_batch(self.subject, self.sae, self.cfg.hook, ids.to(self.subject.device))[0].float().cpu().numpy()
        acts[0] = 0.0  # the BOS position: every run's caches leave it out too
        peak = acts.max(0)
        order = [int(k) for k in np.argsort(-peak, kind="stable")[:n_latents] if peak[k] > 0]
        return OwnText(text, tuple(self.decode(ids[0].tolist())),
                       {k: tuple(round(float(a), 4) for a in acts[:, k]) for k in order})

    def steer(self, j: int, *, strength: float | None = None, target_kl: float | None = 0.5,
              prompts: Sequence[str] | None = None, n_prompts: int = 3, n_tokens: int = 8,
              max_len: int | None = 48, seed: int = 0) -> Steering:
        """Chapter 07's intervention on latent j: at ``strength`` (activation units), or calibrated
        to ``target_kl``; on your ``prompts`` or on cache rows cut where the latent fires."""
        import torch

        from .scorers import intervention as iv

        j = self.check_latent(j)
        if strength is None and target_kl is None:
            raise ValueError("Give a strength or a target KL (e.g. target_kl=0.5).")
        tok = self.subject.tokenizer
        if prompts:
            ids = [np.asarray(tok(p)["input_ids"], np.int64) for p in prompts]
        else:
            ids = iv.prompts_from_cache(self.reader, j, n_prompts, max_len=max_len, seed=seed)
        if not ids:
            why = "never fires in this cache" if self.stats.count[j] == 0 else "fires in no cache row short enough"
            raise ValueError(f"latent {j} {why}, so there is no prompt to steer it on: pass prompts=[...] "
                             "or pick a latent that fires (the dashboard's list, or lab.latents()).")
        batch = iv.PromptBatch(self.subject, ids)
        details: dict[str, Any] = {}
        calibrated = strength is None
        if calibrated:
            cal = iv.calibrate(batch, self.sae, self.cfg.hook, j, target_kl)
            strength, details = cal.strength, {"converged": cal.converged, "steps": len(cal.steps)}
        with torch.inference_mode():
            kl = batch.mean_kl(batch.logprobs(self.sae, self.cfg.hook, j, strength))
        clean = iv.generate(batch, n_tokens, seed=seed)
        steered = iv.generate(batch, n_tokens, seed=seed, sae=self.sae, hook=self.cfg.hook, latent=j, strength=strength)
        dec = lambda t: tok.decode(list(map(int, t)), skip_special_tokens=True)  # noqa: E731
        return Steering(j, float(strength), float(kl), tuple(dec(p) for p in batch.prompts),
                        tuple(dec(c) for c in clean), tuple(dec(s) for s in steered),
                        float(target_kl) if calibrated else None, details)


__all__ = ["Lab", "Feature", "Score", "OwnText", "Steering", "open"]
