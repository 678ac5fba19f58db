"""Planted latents: a scorer-validity control with KNOWN meanings for the run's model and corpus.

Concepts that occur often in the corpus — frequent words picked by a seeded draw, and word classes
given by deterministic rules over decoded tokens (digits, brackets, ...) — each get a linear probe
(L2-regularised logistic regression, torch LBFGS) on the hooked activations of a training split of
rows, evaluated on held-out rows. The probes are stored as an sae-lens ``StandardSAE`` (encoder
column j = probe j's weights, bias = its bias, so latent j fires (> 0) where the probe says the
concept is present; decoder row j = the unit probe direction) plus ``planted.json`` listing
latent -> concept, true explanation and held-out probe AUROC. The whole pipeline runs on it
unchanged; ``validity_report`` tells whether a scorer separates true from shuffled explanations.
"""
from __future__ import annotations

import json
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import saes
from . import metrics
from .metrics import auroc
from .records import Window
from .results import plain
from .scorers import Scorer, run_with_control

PLANTED_JSON = "planted.json"
SEPARATES = "separates"
AT_CHANCE = "at chance: this scorer model is too weak"
TOO_FEW = "too few planted latents to tell"
INVERTED = "below chance: true explanations score worse than shuffled ones (investigate the scorer)"
# metrics.verdict's outcome -> what it says about a scorer taking the planted exam
EXAM = {metrics.ABOVE: SEPARATES, metrics.NOT_DISTINGUISHABLE: AT_CHANCE, metrics.TOO_FEW: TOO_FEW,
        metrics.BELOW: INVERTED}


def _chars_in(allowed: str) -> Callable[[str], bool]:
    return lambda t: bool(t.strip()) and all(c in allowed for c in t.strip())


def _capitalised(t: str) -> bool:
    s = t.strip()
    return t.startswith(" ") and len(s) >= 2 and s.isalpha() and s[0].isupper() and s[1:].islower()


# Function words: too common in any text for an explanation naming them to mean anything.
STOPWORDS = frozenset("""the and for are but not you all any can her was one our out has him his how
its may new now old see two way who did get let put say she too use that with have this will your
from they been were what when which their there would about into than them then these some other
could only also more such each most should where while because those very just does""".split())

# name -> (true explanation, rule over the decoded token text)
CLASS_RULES: dict[str, tuple[str, Callable[[str], bool]]] = {
    "digits": ("digits and numbers", _chars_in("0123456789")),
    "open_bracket": ("an opening bracket or parenthesis", _chars_in("([{")),
    "capitalised": ("a capitalised word", _capitalised),
    "quote": ("a quotation mark", _chars_in("'\"`")),
}


@dataclass(frozen=True)
class PlantedLatent:
    """One planted latent: its concept, true explanation and held-out probe quality."""

    latent: int
    concept: str  # "word:return" or "class:digits"
    explanation: str
    probe_auroc: float  # held-out AUROC of the probe logit
    token_ids: tuple[int, ...] = ()  # the token ids that carry the concept
    precision: float = math.nan  # held-out, latent > 0 vs concept present
    recall: float = math.nan
    n_train_pos: int = 0
    n_heldout_pos: int = 0


@dataclass(frozen=True)
class PlantedSet:
    """A saved planted SAE and what each latent means."""

    sae_path: str
    hook: str
    model_name: str
    latents: tuple[PlantedLatent, ...]
    skipped: tuple[tuple[str, str], ...]  # (concept, why) for concepts left out
    heldout_rows: tuple[int, ...]  # rows of the build tokens kept out of probe training
    seed: int
    first_pos: int
    seconds: float

    @property
    def explanations(self) -> dict[int, str]:
        """latent -> true explanation."""
        return {p.latent: p.explanation for p in self.latents}


def _concepts(tokens: np.ndarray, train: np.ndarray, tokenizer, n_words: int, classes: Sequence[str],
              min_pos: int, seed: int, first_pos: int) -> list[tuple[str, str, tuple[int, ...]]]:
    """(concept, explanation, token ids) for the word classes, then the ``4 * n_words`` most
    frequent word families of the training rows in a seeded order (the caller keeps ``n_words``)."""
    unknown = set(classes) - set(CLASS_RULES)
    if unknown:
        raise ValueError(f"Unknown word classes {sorted(unknown)}: choose from {sorted(CLASS_RULES)}.")
    ids = np.unique(tokens[:, first_pos:])
    text = {int(i): tokenizer.decode([int(i)]) for i in ids}
    out = []
    for name in classes:
        expl, rule = CLASS_RULES[name]
        out.append((f"class:{name}", expl, tuple(i for i, t in text.items() if rule(t))))
    # a word = its case-insensitive family with a plural 's' ("Element", "element", "elements")
    counts = Counter(tokens[train][:, first_pos:].ravel().tolist())
    families: dict[str, Counter] = {}
    for i, t in text.items():
        s = t.strip()
        low = s.lower()
        if len(s) >= 3 and s.isascii() and s.isalpha() and low not in STOPWORDS:
            stem = low[:-1] if low.endswith("s") and len(low) > 3 else low
            families.setdefault(stem, Counter())[i] = counts[i]
    form = {stem: text[c.most_common(1)[0][0]].strip() for stem, c in families.items()}
    freq = sorted(((c.total(), stem) for stem, c in families.items()), reverse=True)
    pool = [stem for c, stem in freq if c >= min_pos][:4 * n_words]
    order = np.random.default_rng(seed).permutation(len(pool))
    out += [(f"word:{form[pool[j]]}", f"the word '{form[pool[j]]}'",
             tuple(sorted(families[pool[j]]))) for j in order]
    return out


def fit_probe(x: torch.Tensor, y: torch.Tensor, *, l2: float = 1e-3,
              max_iter: int = 200) -> tuple[torch.Tensor, float]:
    """Class-balanced L2 logistic regression on standardised ``x`` [N, d]; returns ``(w, b)`` in the
    raw space of ``x``, with the bias moved to the logit threshold that maximises training F1."""
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-6)
    xs = (x - mu) / sd
    yf = y.float()
    pos_w = (len(y) - yf.sum()) / yf.sum().clamp_min(1)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            xs @ w + b, yf, pos_weight=pos_w) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        logit = (xs @ w + b).numpy()
        order = np.argsort(-logit)
        tp = np.cumsum(y.numpy()[order])
        f1 = 2 * tp / (np.arange(1, len(order) + 1) + int(yf.sum()))
        k = int(np.argmax(f1))
        thr = (logit[order[k]] + logit[order[k + 1]]) / 2 if k + 1 < len(order) else logit[order[k]] - 1
        w_raw = (w / sd).detach()
        b_raw = float(b - (w * mu / sd).sum() - thr)
    return w_raw, b_raw


def build_planted(subject, hook: str, tokens: np.ndarray, out_dir: str | Path, *,
                  n_token_concepts: int = 4, classes: Sequence[str] = tuple(CLASS_RULES),
                  heldout_frac: float = 0.25, min_positives: int = 20, min_heldout: int = 5,
                  l2: float = 1e-3, seed: int = 0, first_pos: int = 1) -> PlantedSet:
    """Fit one probe per concept on ``tokens`` [n_rows, ctx_len] (BOS before ``first_pos``) and save
    them as an sae-lens SAE in ``out_dir`` with ``planted.json``. Concepts with fewer than
    ``min_positives`` training or ``min_heldout`` held-out occurrences are skipped and listed in
    ``PlantedSet.skipped`` (a skipped word is replaced by the next of a seeded draw of frequent
    ones). All hooked activations are held in RAM: keep ``tokens`` to ~100k."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    t0 = time.perf_counter()
    tokens = np.asarray(tokens)
    n_rows = len(tokens)
    n_held = int(round(n_rows * heldout_frac))
    if tokens.ndim != 2 or n_held < 1 or n_held >= n_rows:
        raise ValueError(f"tokens {tokens.shape} with heldout_frac={heldout_frac}: need a 2-D array "
                         "with enough rows for a training and a held-out split.")
    perm = np.random.default_rng(seed).permutation(n_rows)
    held, train = np.sort(perm[:n_held]), np.sort(perm[n_held:])
    concepts = _concepts(tokens, train, subject.tokenizer, n_token_concepts, classes, min_positives,
                         seed, first_pos)
    acts = saes.hooked_activations(subject, hook, tokens)[:, first_pos:]
    d_in = acts.shape[-1]
    x_tr, x_he = acts[train].reshape(-1, d_in), acts[held].reshape(-1, d_in)
    tok = tokens[:, first_pos:]
    kept: list[PlantedLatent] = []
    weights: list[tuple[torch.Tensor, float]] = []
    skipped: list[tuple[str, str]] = []
    n_words = 0
    for concept, expl, tids in concepts:
        if concept.startswith("word:") and n_words >= n_token_concepts:
            break
        if not tids:
            skipped.append((concept, "no token of the corpus matches"))
            continue
        y_tr = torch.from_numpy(np.isin(tok[train], tids).ravel())
        y_he = np.isin(tok[held], tids).ravel()
        n_tr, n_he = int(y_tr.sum()), int(y_he.sum())
        if n_tr < min_positives or n_he < min_heldout:
            skipped.append((concept, f"too rare: {n_tr} training / {n_he} held-out occurrences "
                                     f"(need {min_positives} / {min_heldout})"))
            continue
        w, b = fit_probe(x_tr, y_tr, l2=l2)
        logit = (x_he @ w + b).numpy()
        fire = logit > 0
        tp = int((fire & y_he).sum())
        kept.append(PlantedLatent(
            latent=len(kept), concept=concept, explanation=expl,
            probe_auroc=round(auroc(logit, y_he), 4), token_ids=tuple(int(i) for i in tids),
            precision=round(tp / int(fire.sum()), 4) if fire.any() else math.nan,
            recall=round(tp / n_he, 4), n_train_pos=n_tr, n_heldout_pos=n_he))
        weights.append((w, b))
        n_words += concept.startswith("word:")
    if len(kept) < 2:
        raise ValueError(f"Only {len(kept)} concept(s) frequent enough in {tok.size} tokens "
                         f"(skipped: {skipped}); pass more tokens or lower min_positives.")
    w_enc = torch.stack([w for w, _ in weights], 1)  # [d_in, d_sae]
    sae = StandardSAE(StandardSAEConfig(
        d_in=d_in, d_sae=len(kept), apply_b_dec_to_input=False,
        metadata=SAEMetadata(hook_name=hook, model_name=str(subject.name))))
    with torch.no_grad():
        sae.W_enc.copy_(w_enc)
        sae.b_enc.copy_(torch.tensor([b for _, b in weights]))
        sae.W_dec.copy_((w_enc / w_enc.norm(dim=0, keepdim=True)).T)
        sae.b_dec.zero_()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sae.save_model(str(out))
    planted = PlantedSet(sae_path=str(out), hook=hook, model_name=str(subject.name),
                         latents=tuple(kept), skipped=tuple(skipped),
                         heldout_rows=tuple(int(r) for r in held), seed=seed, first_pos=first_pos,
                         seconds=round(time.perf_counter() - t0, 2))
    (out / PLANTED_JSON).write_text(json.dumps(plain(planted), indent=1, allow_nan=False))
    return planted


def read_planted(folder: str | Path) -> PlantedSet:
    """The ``PlantedSet`` recorded in ``folder/planted.json``."""
    path = Path(folder) / PLANTED_JSON
    if not path.exists():
        raise ValueError(f"{path} not found: {folder} is not a planted-latent folder "
                         "(make one with planted.build_planted).")
    d = json.loads(path.read_text())
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    lats = tuple(PlantedLatent(**{**p, "token_ids": tuple(p["token_ids"]),
                                  "probe_auroc": nan(p["probe_auroc"]),
                                  "precision": nan(p["precision"]), "recall": nan(p["recall"])})
                 for p in d["latents"])
    return PlantedSet(**{**d, "sae_path": str(Path(folder)), "latents": lats,
                         "skipped": tuple(tuple(s) for s in d["skipped"]),
                         "heldout_rows": tuple(d["heldout_rows"])})


def load_planted(folder: str | Path, *, device: str = "cpu"):
    """``(SAE, PlantedSet)`` from a folder written by ``build_planted``."""
    planted = read_planted(folder)
    return saes.load(str(folder), device=device), planted


def planted_windows(planted: PlantedSet, tokens: np.ndarray, *, n_pos: int = 20, n_neg: int = 20,
                    width: int = 16, seed: int = 0, rows: Sequence[int] | None = None
                    ) -> dict[int, list[Window]]:
    """Test windows per planted latent as ``records.Window`` records (source "planted"): ``n_pos`` windows of
    ``width`` tokens around an occurrence of the concept (at ~3/4 of the window; activation 1.0 on
    every concept token, 0 elsewhere: the known truth; quantile 0) and ``n_neg`` random windows
    without it (all 0). ``rows`` (default: all) picks rows of ``tokens``; the probes play no part
    here, so training rows are fair game for a scorer."""
    fp = planted.first_pos
    rows = np.arange(len(tokens)) if rows is None else np.asarray(rows, int)
    if width > tokens.shape[1] - fp:
        raise ValueError(f"width={width} does not fit rows of {tokens.shape[1] - fp} tokens.")
    sub = np.asarray(tokens)[rows]
    rng = np.random.default_rng(seed)

    def window(lat: int, r: int, s: int, hit: np.ndarray, positive: bool) -> Window:
        acts = tuple(float(a) for a in hit[r, s:s + width])
        return Window(lat, int(rows[r]), int(s), tuple(int(t) for t in sub[r, s:s + width]), acts,
                      max(acts), 0 if positive else None, "activating" if positive else "random",
                      source="planted")

    out: dict[int, list[Window]] = {}
    for p in planted.latents:
        hit = np.isin(sub, p.token_ids)
        hit[:, :fp] = False
        r_idx, pos = np.nonzero(hit)
        starts = np.clip(pos - (3 * width) // 4, fp, sub.shape[1] - width)
        wins = sorted(set(zip(r_idx.tolist(), starts.tolist())))
        pick = rng.permutation(len(wins))[:n_pos]
        exs = [window(p.latent, *wins[i], hit, True) for i in sorted(pick)]
        seen: set[tuple[int, int]] = set()
        for _ in range(50 * n_neg):
            if len(seen) >= n_neg:
                break
            r, s = int(rng.integers(len(sub))), int(rng.integers(fp, sub.shape[1] - width + 1))
            if not hit[r, s:s + width].any():
                seen.add((r, s))
        exs += [window(p.latent, r, s, hit, False) for r, s in sorted(seen)]
        if len(exs) > len(seen) and seen:
            out[p.latent] = exs
    missing = [p.concept for p in planted.latents if p.latent not in out]
    if missing:
        raise ValueError(f"No activating or no non-activating windows for {missing} in "
                         f"{len(rows)} rows: pass more rows.")
    return out


def validity_report(scorer: Scorer, planted: PlantedSet,
                    examples: Mapping[int, Sequence[Any]], seed: int = 0,
                    metric: str | None = "auroc") -> dict[str, Any]:
    """Score the planted latents with their true and shuffled explanations: the mean of ``metric``
    (a ``LatentMetrics`` field; keys ``true_<metric>``, ``shuffled_<metric>``) for each, the paired
    difference with a bootstrap 95% CI, and a verdict (``metrics.verdict`` read as an exam:
    ``EXAM``: "separates", "at chance ...", "below chance ..." or "too few ...").
    ``metric=None``: AUROC when the
    scorer gave scores, else balanced accuracy (``scorers.primary_metric``)."""
    expl = {p.latent: p.explanation for p in planted.latents if p.latent in examples}
    t0 = time.perf_counter()
    run = run_with_control(scorer, expl, examples, seed=seed, metric=metric)
    real, control, metric, cmp = run.real, run.control, run.metric, run.comparison
    verdict = EXAM[metrics.verdict(cmp.diff)]
    concept = {p.latent: p.concept for p in planted.latents}
    shuf = {r.latent: r for r in control}
    return {
        "scorer": scorer.name, "metric": metric, "n_latents": cmp.diff.n,
        f"true_{metric}": cmp.real.mean, "true_ci": (cmp.real.low, cmp.real.high),
        f"shuffled_{metric}": cmp.control.mean, "shuffled_ci": (cmp.control.low, cmp.control.high),
        "diff": cmp.diff.mean, "diff_ci": (cmp.diff.low, cmp.diff.high),
        "frac_true_better": cmp.frac_real_better, "verdict": verdict,
        "summary": (f"{scorer.name}: true {cmp.real.mean:.3f} vs shuffled {cmp.control.mean:.3f} "
                    f"{metric}, diff {cmp.diff.mean:+.3f} [95% CI {cmp.diff.low:+.3f}, "
                    f"{cmp.diff.high:+.3f}] over {cmp.diff.n} planted latents: {verdict}"),
        "per_latent": [{"latent": r.latent, "concept": concept[r.latent],
                        "explanation": r.explanation, f"true_{metric}": getattr(r.metrics, metric),
                        "shuffled_explanation": shuf[r.latent].explanation,
                        f"shuffled_{metric}": getattr(shuf[r.latent].metrics, metric)} for r in real],
        "seconds": round(time.perf_counter() - t0, 2),
    }


__all__ = ["CLASS_RULES", "PlantedLatent", "PlantedSet", "build_planted", "fit_probe",
           "read_planted", "load_planted", "planted_windows", "validity_report", "SEPARATES",
           "AT_CHANCE", "TOO_FEW", "INVERTED", "EXAM"]
