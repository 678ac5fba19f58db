"""Intervention (output-side) scoring, METHODS section 4.

For a latent j, prompts are examples cut just after their first activating token. At the hooked
module's output (e.g. the residual ``model.layers.8``), at the LAST prompt position only, the hidden
state h is encoded, ``strength`` is added to z_j and ``dec(z') + e`` is written back, with the error
term ``e = h - dec(z)`` kept. We compute it as ``h + (dec(z') - dec(z))``, which is the same quantity
and is exactly ``h`` at strength 0. In generation with a KV cache, only the first forward step holds
the last prompt position, so only that step is touched.

Units: ``strength`` is absolute, in the latent's activation units (the values the cache stores);
``strength_rel`` reports it divided by the latent's mean activation at the intervened positions.

Pipeline per latent: calibrate the strength so the mean next-token KL(clean || intervened) hits a
target (search on log10 strength); explain the output side by the tokens whose next-token
probability rose most; generate a few tokens clean and intervened (same seed); a scorer LM reads
``<passage> ... The above passage contains an amplified amount of '<explanation>'`` and the score is
mean over prompts of NLL(explanation | clean) - NLL(explanation | intervened), in nats.
Controls: a random SAE (``random_sae_control``) and shuffled explanations (``shuffled_control``).
Every scoring function returns ``records.ScorerResult`` (scorer "intervention"): one
``ScoredExample`` per prompt (score = that prompt's NLL drop), ``metrics.mean_score`` / ``sem``
over prompts, and the calibration (strength, KL, raised tokens) in ``details``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..metrics import NAN, LatentMetrics
from ..records import ScoredExample, ScorerResult
from .base import shuffled_explanations

TEMPLATE = "{passage} ... The above passage contains an amplified amount of '"
NAME = "intervention"
RANDOM_SAE = "random_sae"
SHUFFLED = "shuffled"


@dataclass(frozen=True)
class Calibration:
    """Result of the strength search: the chosen strength, its mean KL and every (strength, KL)."""

    latent: int
    strength: float
    achieved_kl: float
    target_kl: float
    act_scale: float  # mean z_j at the intervened positions (clean)
    converged: bool  # achieved KL within rtol of the target
    steps: tuple[tuple[float, float], ...]


# ----------------------------------------------------------------------------- prompts

def _cut_prompts(firing: Mapping[int, int], tokens: np.ndarray, n: int, min_len: int,
                 max_len: int | None, seed: int) -> list[np.ndarray]:
    """Seeded choice of up to n rows; each row cut after its first firing position."""
    top = max_len if max_len is not None else tokens.shape[1]
    rows = sorted(r for r, p in firing.items() if min_len <= p + 1 <= top)
    rng = np.random.default_rng(seed)
    pick = sorted(rng.permutation(len(rows))[:n])
    return [np.asarray(tokens[rows[i], :firing[rows[i]] + 1], dtype=np.int64) for i in pick]


def prompts_from_cache(reader, latent: int, n: int = 8, *, min_len: int = 4,
                       max_len: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Up to n prompts (token ids, BOS first) from rows where ``latent`` fires in a cache, each cut
    just after its first activating token; prompts outside [min_len, max_len] tokens are skipped."""
    flat, _ = reader.latent(latent)
    firing: dict[int, int] = {}
    for f in np.sort(flat):
        firing.setdefault(int(f) // reader.ctx_len, int(f) % reader.ctx_len)
    return _cut_prompts(firing, reader.tokens, n, min_len, max_len, seed)


def prompts_from_rows(subject, sae, hook: str, tokens: np.ndarray, latent: int, n: int = 8, *,
                      min_len: int = 4, max_len: int | None = None, seed: int = 0,
                      batch_size: int = 16) -> list[np.ndarray]:
    """Same as ``prompts_from_cache`` for an SAE without a cache (e.g. the random control): encodes
    the token rows on the fly (forward stops at ``hook``)."""
    from ..cache import encode_batch

    firing: dict[int, int] = {}
    for b0 in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(np.array(tokens[b0:b0 + batch_size], dtype=np.int64))
        acts = encode_batch(subject, sae, hook, ids.to(subject.device))[..., latent]
        for r, p in (acts[:, 1:] > 0).nonzero().tolist():  # BOS left out; row-major order,
            firing.setdefault(b0 + r, p + 1)  # so the first position per row wins
    return _cut_prompts(firing, tokens, n, min_len, max_len, seed)


# ----------------------------------------------------------------------------- intervention

@contextmanager
def intervene(subject, sae, hook: str, latent: int, strength: float,
              position: int | torch.Tensor = -1, record: list | None = None) -> Iterator[None]:
    """Forward hook on ``hook``: on the FIRST forward call only, at ``position`` (an int or one
    index per row), write ``h + dec(z') - dec(z)`` with ``z'_j = z_j + strength``.
    ``record`` (a list) receives the clean z_j at those positions."""
    if not 0 <= latent < int(sae.cfg.d_sae):
        raise IndexError(f"latent {latent} out of range: the SAE has {sae.cfg.d_sae} latents.")
    calls = [0]

    def fwd(_mod, _inp, out):
        calls[0] += 1
        if calls[0] > 1:
            return None
        h = out[0] if isinstance(out, tuple) else out
        rows = torch.arange(h.shape[0], device=h.device)
        pos = position if isinstance(position, int) else position.to(h.device)
        x = h[rows, pos].to(sae.W_dec.dtype)
        z = sae.encode(x)
        z2 = z.clone()
        z2[:, latent] += strength
        if record is not None:
            record.append(z[:, latent].detach().float().cpu())
        h = h.clone()
        h[rows, pos] = h[rows, pos] + (sae.decode(z2) - sae.decode(z)).to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def pre(mod, args):  # a ".input" hook: the same edit on the module's first input
        out = fwd(mod, args, args[0])
        return None if out is None else (out, *args[1:])

    from ..models import split_hook

    module = subject.module(hook)
    handle = module.register_forward_pre_hook(pre) if split_hook(hook)[1] else module.register_forward_hook(fwd)
    try:
        yield
    finally:
        handle.remove()


class PromptBatch:
    """Left-padded prompts with the KV cache of all but their last token, so each strength costs
    one single-token forward. ``logprobs(...)`` gives next-token log-probs after the last token."""

    def __init__(self, subject, prompts: Sequence[np.ndarray]) -> None:
        if not prompts:
            raise ValueError("No prompts: the latent fires nowhere usable (try more rows or a "
                             "smaller min_len).")
        if min(len(p) for p in prompts) < 2:
            raise ValueError("Prompts need at least 2 tokens (BOS + the activating token).")
        self.subject = subject
        self.prompts = [np.asarray(p, dtype=np.int64) for p in prompts]
        tok = subject.tokenizer
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        L = max(len(p) for p in self.prompts)
        ids = torch.full((len(prompts), L), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), L), dtype=torch.long)
        for i, p in enumerate(self.prompts):
            ids[i, L - len(p):] = torch.from_numpy(p)
            mask[i, L - len(p):] = 1
        dev = subject.device
        self.ids, self.mask = ids.to(dev), mask.to(dev)
        self.pos = (mask.cumsum(1) - 1).clamp(min=0).to(dev)
        with torch.inference_mode():
            out = subject.hf(input_ids=self.ids[:, :-1], attention_mask=self.mask[:, :-1],
                             position_ids=self.pos[:, :-1], use_cache=True)
        self.cache = out.past_key_values
        self.clean = self.logprobs()

    def logprobs(self, sae=None, hook: str = "", latent: int = 0, strength: float = 0.0,
                 record: list | None = None) -> torch.Tensor:
        """[B, vocab] next-token log-probs, clean (``sae=None``) or intervened."""
        L = self.ids.shape[1]
        try:
            with torch.inference_mode():
                if sae is None:
                    out = self._last()
                else:
                    with intervene(self.subject, sae, hook, latent, strength, -1, record):
                        out = self._last()
        finally:
            extra = self.cache.get_seq_length() - (L - 1)
            if extra > 0:  # drop the last token again: the prefix cache is reused
                self.cache.crop(-extra)
        return torch.log_softmax(out.logits[:, -1].float(), dim=-1)

    def _last(self):
        return self.subject.hf(input_ids=self.ids[:, -1:], attention_mask=self.mask,
                               position_ids=self.pos[:, -1:], past_key_values=self.cache,
                               use_cache=True)

    def mean_kl(self, intervened: torch.Tensor) -> float:
        """Mean over prompts of KL(clean || intervened), nats."""
        kl = (self.clean.exp() * (self.clean - intervened)).sum(-1)
        return float(kl.clamp(min=0).mean())


def calibrate(batch: PromptBatch, sae, hook: str, latent: int, target_kl: float = 0.5, *,
              rtol: float = 0.05, max_steps: int = 14, bounds: tuple[float, float] = (-3.0, 4.0)
              ) -> Calibration:
    """Strength whose mean next-token KL(clean || intervened) is within ``rtol`` of ``target_kl``.

    Search on x = log10(strength) (``bounds``), from the latent's mean activation at the prompts'
    last positions: a secant on (x, ln KL), first with the small-strength slope (KL ~ strength^2),
    steps capped at 1.5 decades, bisecting the bracket once the target is bracketed and the secant
    leaves it. At most ``max_steps`` forwards; returns the evaluated point closest to the target
    in log ratio (``converged`` says whether it is within ``rtol``). METHODS' targets: 0.1-3.0.
    """
    if target_kl <= 0:
        raise ValueError(f"target_kl={target_kl}: use a positive KL target (reference 0.5).")
    record: list = []
    steps: list[tuple[float, float]] = []

    def f(x: float) -> float:
        kl = batch.mean_kl(batch.logprobs(sae, hook, latent, 10.0 ** x, record))
        steps.append((10.0 ** x, kl))
        return math.log(max(kl, 1e-12)) - math.log(target_kl)

    batch.logprobs(sae, hook, latent, 0.0, record)
    scale = float(record[0].mean())
    x = min(max(math.log10(scale) if scale > 0 else 0.0, bounds[0]), bounds[1])
    tol = math.log1p(rtol)
    pts: list[tuple[float, float]] = []  # evaluated (x, f)
    lo: tuple[float, float] | None = None  # f < 0
    hi: tuple[float, float] | None = None  # f >= 0
    while len(steps) < max_steps:
        fx = f(x)
        pts.append((x, fx))
        if fx < 0:
            lo = (x, fx) if lo is None or x > lo[0] else lo
        else:
            hi = (x, fx) if hi is None or x < hi[0] else hi
        if abs(fx) <= tol:
            break
        if len(pts) == 1:  # KL ~ strength^2: slope 2 ln(10) in (x, ln KL)
            slope = 2 * math.log(10)
        else:
            (x1, f1), (x2, f2) = pts[-2], pts[-1]
            slope = (f2 - f1) / (x2 - x1) if x2 != x1 else 0.0
        nxt = x - fx / slope if slope > 1e-3 else x + (1.0 if fx < 0 else -1.0)
        nxt = min(max(nxt, x - 1.5), x + 1.5)
        if lo is not None and hi is not None:
            a, b = sorted((lo[0], hi[0]))
            if not a + 0.05 * (b - a) <= nxt <= b - 0.05 * (b - a):
                nxt = (a + b) / 2  # safeguard: bisect the bracket
        nxt = min(max(nxt, bounds[0]), bounds[1])
        if nxt == x:
            break  # stuck at a bound
        x = nxt
    best = min(steps, key=lambda s: abs(math.log(max(s[1], 1e-12) / target_kl)))
    return Calibration(latent=latent, strength=best[0], achieved_kl=best[1], target_kl=target_kl,
                       act_scale=scale, converged=abs(math.log(max(best[1], 1e-12) / target_kl)) <= tol,
                       steps=tuple(steps))


def raised_tokens(clean: torch.Tensor, intervened: torch.Tensor, tokenizer,
                  k: int = 3) -> list[tuple[str, float]]:
    """The k tokens whose next-token probability rose most (mean over prompts), with the rise.
    Tokens that decode to nothing printable are skipped."""
    rise = (intervened.exp() - clean.exp()).mean(0)
    out: list[tuple[str, float]] = []
    for t in torch.argsort(rise, descending=True)[:50 * k].tolist():
        s = tokenizer.decode([t])
        if s.strip() and s not in [o[0] for o in out]:
            out.append((s, float(rise[t])))
        if len(out) == k:
            break
    return out


def explain_raised(raised: Sequence[tuple[str, float]]) -> str:
    """An output-side explanation from raised tokens: ``"foo, bar, baz"`` (stripped tokens)."""
    return ", ".join(dict.fromkeys(s.strip() for s, _ in raised))


# ----------------------------------------------------------------------------- generation + NLL

def generate(batch: PromptBatch, n_tokens: int = 8, *, seed: int = 0, sae=None, hook: str = "",
             latent: int = 0, strength: float = 0.0) -> list[np.ndarray]:
    """Sample ``n_tokens`` (T=1, no top-k/top-p) per prompt, clean or with the intervention on the
    first step (the last prompt position). Seeded: clean and intervened share the random stream."""
    hf = batch.subject.hf
    torch.manual_seed(seed)
    # A copy of the prefix cache: the first step computes only the last prompt token.
    kw = dict(input_ids=batch.ids, attention_mask=batch.mask, max_new_tokens=n_tokens,
              do_sample=True, temperature=1.0, top_k=0, top_p=1.0, pad_token_id=batch.pad,
              past_key_values=copy.deepcopy(batch.cache))
    with torch.inference_mode():
        if sae is None:
            out = hf.generate(**kw)
        else:
            with intervene(batch.subject, sae, hook, latent, strength, -1):
                out = hf.generate(**kw)
    return [row.cpu().numpy() for row in out[:, batch.ids.shape[1]:]]


def explanation_nll(scorer, passages: Sequence[str], explanation: str,
                    batch_size: int = 8) -> np.ndarray:
    """NLL (nats, summed over tokens) of ``explanation + "'"`` after TEMPLATE for each passage.
    ``scorer``: anything with ``.hf`` (causal LM) and ``.tokenizer``."""
    tok = scorer.tokenizer
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    target = tok(explanation + "'", add_special_tokens=False)["input_ids"]
    seqs = [bos + tok(TEMPLATE.format(passage=p), add_special_tokens=False)["input_ids"]
            for p in passages]
    dev = next(scorer.hf.parameters()).device
    out = []
    for b0 in range(0, len(seqs), batch_size):
        chunk = [s + target for s in seqs[b0:b0 + batch_size]]
        L = max(map(len, chunk))
        ids = torch.tensor([s + [0] * (L - len(s)) for s in chunk], device=dev)  # right pad
        with torch.inference_mode():
            lp = torch.log_softmax(scorer.hf(input_ids=ids).logits.float(), -1)
        for i, s in enumerate(chunk):
            n0 = len(s) - len(target)
            tgt = torch.tensor(target, device=dev)
            out.append(-float(lp[i, n0 - 1:len(s) - 1].gather(1, tgt[:, None]).sum()))
    return np.asarray(out)


def _text(tokenizer, ids: np.ndarray) -> str:
    return tokenizer.decode([int(t) for t in ids], skip_special_tokens=True)


# ----------------------------------------------------------------------------- scoring

def score_latent(subject, sae, hook: str, latent: int, prompts: Sequence[np.ndarray], *,
                 explanation: str | None = None, target_kl: float = 0.5, n_tokens: int = 8,
                 n_raised: int = 3, seed: int = 0, scorer=None, control: str | None = None,
                 calibration_steps: int = 14) -> ScorerResult:
    """Calibrate, explain (unless ``explanation`` is given), generate and score one latent.
    ``scorer`` defaults to the subject model."""
    t0 = time.perf_counter()
    batch = PromptBatch(subject, prompts)
    cal = calibrate(batch, sae, hook, latent, target_kl, max_steps=calibration_steps)
    t_cal = time.perf_counter()
    raised = raised_tokens(batch.clean, batch.logprobs(sae, hook, latent, cal.strength),
                           subject.tokenizer, n_raised)
    expl = explanation if explanation is not None else explain_raised(raised)
    if not expl.strip():
        raise ValueError(f"Latent {latent}: empty explanation.")
    clean = generate(batch, n_tokens, seed=seed)
    steered = generate(batch, n_tokens, seed=seed, sae=sae, hook=hook, latent=latent,
                       strength=cal.strength)
    t_gen = time.perf_counter()
    tok = subject.tokenizer
    texts = [_text(tok, p) for p in batch.prompts]
    pc = [t + _text(tok, g) for t, g in zip(texts, clean)]
    pi = [t + _text(tok, g) for t, g in zip(texts, steered)]
    details = {"strength": cal.strength,
               "strength_rel": cal.strength / cal.act_scale if cal.act_scale > 0 else NAN,
               "achieved_kl": cal.achieved_kl, "target_kl": cal.target_kl,
               "raised": [[t, p] for t, p in raised]}
    result = _scored(latent, expl, texts, pc, pi, scorer or subject, control, details)
    t_end = time.perf_counter()
    return dataclasses.replace(result, usage={
        "seed": seed, "n_tokens": n_tokens, "hook": hook, "calibration_steps": cal.steps,
        "converged": cal.converged, "act_scale": cal.act_scale,
        "seconds": {"calibrate": t_cal - t0, "generate": t_gen - t_cal, "score": t_end - t_gen}})


def _scored(latent: int, expl: str, prompts: Sequence[str], clean: Sequence[str],
            steered: Sequence[str], scorer, control: str | None,
            details: Mapping[str, Any]) -> ScorerResult:
    """Score ``expl`` on clean vs intervened passages: one ScoredExample per prompt."""
    nc = explanation_nll(scorer, clean, expl)
    ni = explanation_nll(scorer, steered, expl)
    d = nc - ni
    sem = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else NAN
    ex = tuple(ScoredExample(latent=latent, example_id=i, text=p, label=True, quantile=None,
                             score=float(a) - float(b),
                             details={"clean": c, "intervened": s, "nll_clean": float(a),
                                      "nll_intervened": float(b)})
               for i, (p, c, s, a, b) in enumerate(zip(prompts, clean, steered, nc, ni)))
    m = LatentMetrics(latent=latent, n_pos=len(d), n_neg=0, n_failed=0, balanced_accuracy=NAN,
                      precision=NAN, recall=NAN, f1=NAN, auroc=NAN, mean_score=float(d.mean()),
                      sem=sem)
    return ScorerResult(latent=latent, scorer=NAME, explanation=expl, examples=ex, metrics=m,
                        control=control, details=dict(details))


def score_latents(subject, sae, hook: str, prompts: Mapping[int, Sequence[np.ndarray]],
                  **kw: Any) -> list[ScorerResult]:
    """``score_latent`` for each latent of ``prompts`` (sorted); latents without prompts skipped."""
    return [score_latent(subject, sae, hook, j, prompts[j], **kw)
            for j in sorted(prompts) if len(prompts[j])]


def rescore(result: ScorerResult, explanation: str, scorer, *,
            control: str | None = SHUFFLED) -> ScorerResult:
    """The same generations scored with another explanation (no new calibration/generation)."""
    if not result.examples:
        raise ValueError(f"Latent {result.latent}: result has no examples to rescore.")
    ex = result.examples
    out = _scored(result.latent, explanation, [e.text for e in ex],
                  [e.details["clean"] for e in ex], [e.details["intervened"] for e in ex],
                  scorer, control, result.details)
    return dataclasses.replace(out, usage={**result.usage, "rescored_from": result.explanation})


def shuffled_control(results: Sequence[ScorerResult], scorer, *,
                     seed: int = 0) -> list[ScorerResult]:
    """Each latent's generations scored with another latent's explanation (seeded derangement)."""
    by = {r.latent: r for r in results}
    shuf = shuffled_explanations({j: r.explanation for j, r in by.items()}, seed)
    return [rescore(by[j], shuf[j], scorer, control=SHUFFLED) for j in sorted(by)]


def random_sae_control(subject, rnd, hook: str, latents: Sequence[int], tokens: np.ndarray, *,
                       n_prompts: int = 8, min_len: int = 4, seed: int = 0,
                       record=None, **kw: Any) -> list[ScorerResult]:
    """The whole pipeline on ``rnd``, a random SAE (``saes.random_like`` the trained one); prompts
    come from ``tokens`` rows where each random latent fires. Latents firing nowhere are skipped.
    ``record`` (a ``progress.Progress``) keeps each latent's result as it finishes."""
    from ..progress import recorded

    def one(j: int) -> ScorerResult | None:
        prompts = prompts_from_rows(subject, rnd, hook, tokens, j, n_prompts, min_len=min_len, seed=seed)
        return score_latent(subject, rnd, hook, j, prompts, seed=seed, control=RANDOM_SAE, **kw) if prompts else None

    return [r for j in latents if (r := recorded(record, str(j), lambda: one(j))) is not None]


__all__ = ["TEMPLATE", "NAME", "RANDOM_SAE", "SHUFFLED", "Calibration", "prompts_from_cache",
           "prompts_from_rows", "intervene", "PromptBatch", "calibrate", "raised_tokens",
           "explain_raised", "generate", "explanation_nll", "score_latent", "score_latents",
           "rescore", "shuffled_control", "random_sae_control"]
