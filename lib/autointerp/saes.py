"""SAE sources: an sae-lens release, an sae-lens folder, a sparsify folder, or one trained here.

The ``sae`` setting picks the source:
- ``"train"``: train a TopK SAE with sae-lens's training runner on the run's model and corpus and
  save it (sae-lens format) in ``<run>/sae``; a later run finds it there and does not retrain.
- a folder: an sae-lens folder (``cfg.json`` + ``sae_weights.safetensors``), a sparsify folder
  (``cfg.json`` + ``sae.safetensors``) or a Gemma Scope folder (``params.npz``), told apart by their
  weight file (``sae_formats`` reads the last two).
- ``"sae-lens:RELEASE/SAE_ID"``: ``SAE.from_pretrained`` (needs the hub).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sae_lens import SAE

from . import sae_formats
from .paths import HubUnreachable, hub_reachable

SAE_LENS_WEIGHTS = "sae_weights.safetensors"


@dataclass(frozen=True)
class TrainReport:
    """What training produced and how long it took."""

    path: str
    d_in: int
    d_sae: int
    k: int
    hook: str
    training_tokens: int
    seconds: float
    fvu: float  # fraction of variance unexplained on held-out rows
    frac_alive: float  # latents that fired at least once on held-out rows


def load(spec: str, *, device: str = "cpu", dtype: str = "float32") -> SAE:
    """Load an SAE from a folder or an sae-lens release (see module docstring). ``device="auto"``
    (the model spread over GPUs) puts the SAE on the first GPU, or the CPU without one."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("sae-lens:"):
        release, _, sae_id = spec.removeprefix("sae-lens:").partition("/")
        if not sae_id:
            raise ValueError(f"{spec!r}: write sae-lens releases as 'sae-lens:RELEASE/SAE_ID'.")
        _check_registry(release, sae_id)
        hint = ("Download it where the hub is reachable (SAE.from_pretrained(...).save_model(folder)), "
                "copy the folder here and pass sae='that/folder', or use sae='train'.")
        if not hub_reachable():
            raise HubUnreachable(f"Could not download SAE {sae_id!r} of release {release!r}: the "
                                 f"Hugging Face hub is unreachable from this machine. {hint}")
        try:
            sae = SAE.from_pretrained(release, sae_id, device=device)
        except ValueError:
            raise  # sae-lens's own message: unknown release or id, with the valid choices
        except Exception as err:  # noqa: BLE001 - network errors come in many types
            raise RuntimeError(f"Could not download SAE {sae_id!r} of release {release!r} "
                               f"({type(err).__name__}: {err}). {hint}") from err
        return sae.to(dtype=getattr(torch, dtype))
    path = Path(spec).expanduser()
    if (path / SAE_LENS_WEIGHTS).exists():
        sae = SAE.load_from_disk(str(path), device=device, dtype=dtype)
    elif (path / sae_formats.SPARSIFY_WEIGHTS).exists():
        sae = SAE.load_from_disk(str(path), device=device, dtype=dtype, converter=sae_formats.sparsify_loader)
    elif (path / sae_formats.GEMMA_SCOPE_WEIGHTS).exists():
        sae = sae_formats.load_gemma_scope(path).to(device)
    elif path.is_dir():
        raise ValueError(
            f"{path} is not an SAE folder: expected {SAE_LENS_WEIGHTS} (sae-lens), "
            f"{sae_formats.SPARSIFY_WEIGHTS} (sparsify) next to a cfg.json, or "
            f"{sae_formats.GEMMA_SCOPE_WEIGHTS} (Gemma Scope)."
        )
    else:
        raise ValueError(
            f"SAE {spec!r} not found: pass 'train', an SAE folder, or 'sae-lens:RELEASE/SAE_ID'."
        )
    return sae.to(dtype=getattr(torch, dtype))


def _check_registry(release: str, sae_id: str) -> None:
    """An id sae-lens does not know fails here, offline, with the close names (its registry ships
    with the package)."""
    import difflib

    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    registry = get_pretrained_saes_directory()
    if release not in registry:
        close = difflib.get_close_matches(release, list(registry), n=5, cutoff=0.4)
        raise ValueError(f"Unknown sae-lens release {release!r}: not in sae-lens's registry. Close: {close}. "
                         "Write 'sae-lens:RELEASE/SAE_ID' with a release from sae_lens's pretrained_saes.yaml.")
    ids = list(registry[release].saes_map)
    if sae_id not in ids:
        close = difflib.get_close_matches(sae_id, ids, n=5, cutoff=0.4)
        raise ValueError(f"Release {release!r} has no SAE {sae_id!r}. Close: {close or ids[:5]}.")


def random_sae(d_in: int, d_sae: int, k: int, *, seed: int = 0, hook: str = "",
               model_name: str = "") -> SAE:
    """A control SAE: TopK, unit-norm Gaussian encoder rows, decoder = encoder transposed, zero biases."""
    from sae_lens import TopKSAE, TopKSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    gen = torch.Generator().manual_seed(seed)
    rows = torch.randn(d_sae, d_in, generator=gen)
    rows /= rows.norm(dim=1, keepdim=True)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k,
                                metadata=SAEMetadata(hook_name=hook, model_name=model_name)))
    with torch.no_grad():
        sae.W_enc.copy_(rows.T)
        sae.W_dec.copy_(rows)
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae.eval()


def active_k(sae: SAE, subject=None, hook: str = "", rows: np.ndarray | None = None) -> int:
    """Latents active per token: a TopK SAE's k, else (JumpReLU, ReLU) its mean L0 on ``rows``."""
    k = getattr(sae.cfg, "k", None)
    if k:
        return int(k)
    if subject is None or rows is None:
        raise ValueError(f"A {sae.cfg.architecture()} SAE has no k: pass the model, hook and rows to measure its L0.")
    x = hooked_activations(subject, hook, rows[:16])[:, 1:].reshape(-1, int(sae.cfg.d_in))
    with torch.inference_mode():
        l0 = (sae.encode(x.to(sae.W_enc.device, sae.W_enc.dtype)) > 0).sum(-1).float().mean()
    return max(1, round(float(l0)))


def random_like(sae: SAE, subject, hook: str, rows: np.ndarray, *, seed: int = 0) -> SAE:
    """The random-SAE control for ``sae``: ``random_sae`` of its width, with as many latents active
    per token (``active_k``), on its device and in its dtype."""
    k = active_k(sae, subject, hook, rows)
    rnd = random_sae(int(sae.cfg.d_in), int(sae.cfg.d_sae), k, seed=seed, hook=hook)
    return rnd.to(device=sae.W_enc.device, dtype=sae.W_enc.dtype)


def neuron_sae(subject, layer: int, k: int = 32) -> tuple[SAE, str]:
    """Neurons as an identity-like SAE (METHODS §6): at the MLP's hidden activation (the down
    projection's input), encoder and decoder are the identity and TopK keeps the k largest values
    per token (sae-lens TopK then drops negatives among them, which SiLU-gated MLPs rarely have).
    Steering neuron j at that hook adds ``strength * down_proj.weight[:, j]`` to the MLP output, so
    intervention works unchanged; ``output_directions`` gives those columns for the logit lens,
    hard negatives and alignment. Returns (sae, hook)."""
    from .models import neuron_hook

    hook = neuron_hook(layer)
    d = subject.hook_dim(hook)
    sae = random_sae(d, d, k, hook=hook, model_name=subject.name)
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
    return sae.to(device=subject.device, dtype=next(subject.hf.parameters()).dtype), hook


def output_directions(sae: SAE, subject, hook: str) -> torch.Tensor:
    """Each latent's direction in the model's output space of the hooked module, [d_sae, d]: the
    decoder rows, or for a ``.input`` hook those rows sent through the module (for the neurons'
    down projection: its weight's columns)."""
    from .models import split_hook

    w = sae.W_dec.detach().float()
    if split_hook(hook)[1]:
        module = subject.module(hook)
        if not isinstance(module, torch.nn.Linear):
            raise ValueError(f"{hook}: output directions of an input hook need a Linear module.")
        w = w @ module.weight.detach().float().T  # [d_sae, d_out]
    return w.cpu()


def check_fits(sae: SAE, subject, hook: str) -> int:
    """Raise a clear error unless the SAE's d_in equals the width of the hooked module's output."""
    d_hook = subject.hook_dim(hook)
    d_in = int(sae.cfg.d_in)
    if d_in != d_hook:
        raise ValueError(
            f"SAE d_in {d_in} != width {d_hook} of {hook} in {subject.name}: this SAE was trained "
            "on another model or hook point. Pick the hook it was trained on "
            f"(its metadata says {sae.cfg.metadata.hook_name!r}) or another SAE."
        )
    return d_in


def train_topk(subject, tokens: np.ndarray, hook: str, out_dir: Path, *, width: int, k: int,
               batch_tokens: int = 512, lr: float = 1e-3, seed: int = 0,
               heldout_rows: int = 32, first_pos: int = 1, progress: bool = True) -> TrainReport:
    """Train a TopK SAE with sae-lens's runner on pre-packed token rows; save it in ``out_dir``.

    The last ``heldout_rows`` rows are kept out of training and used for FVU / alive-latent figures.
    Positions before ``first_pos`` (the BOS attention sink) are left out of training and evaluation.
    """
    import datasets
    from sae_lens import (LanguageModelSAERunnerConfig, LanguageModelSAETrainingRunner,
                          LoggingConfig, TopKTrainingSAEConfig)
    from sae_lens.load_model import HookedProxyLM

    from .remote import needs_local_weights

    needs_local_weights(subject, "Training an SAE")
    n_rows, ctx_len = tokens.shape
    if n_rows <= heldout_rows + 1:
        raise ValueError(f"Need more than {heldout_rows + 1} rows to train, got {n_rows}.")
    out_dir = Path(out_dir)
    stage = out_dir.parent / f".{out_dir.name}.training"  # published by one rename when finished
    if stage.exists():
        shutil.rmtree(stage)  # a killed earlier attempt
    train_rows, held = tokens[:-heldout_rows], tokens[-heldout_rows:]
    d_in = subject.hook_dim(hook)
    store_prompts = max(1, min(16, batch_tokens // ctx_len))
    n_buffer = 4 * -(-batch_tokens // ctx_len)  # sae-lens: buffer = n_batches_in_buffer * ctx_len tokens
    cfg = LanguageModelSAERunnerConfig(
        sae=TopKTrainingSAEConfig(d_in=d_in, d_sae=width, k=k, dtype="float32", device="cpu",
                                  normalize_activations="expected_average_only_in"),
        model_class_name="AutoModelForCausalLM", model_name=subject.source, hook_name=hook,
        dataset_path="autointerp-packed", is_dataset_tokenized=True, streaming=False,
        context_size=ctx_len, prepend_bos=False, seqpos_slice=(first_pos, None),
        training_tokens=int(train_rows[:, first_pos:].size),
        train_batch_size_tokens=batch_tokens, store_batch_size_prompts=store_prompts,
        n_batches_in_buffer=n_buffer, lr=lr, seed=seed, device=str(subject.device),
        logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, save_final_checkpoint=False,
        checkpoint_path=str(stage / "checkpoints"), output_path=None,
        n_batches_for_norm_estimate=4, verbose=progress,
        # Our budgets are ~100-1000 steps: call a latent dead after 10 silent steps so the AuxK
        # loss revives it (sae-lens default 1000 suits million-step runs).
        dead_feature_window=10,
    )
    dataset = datasets.Dataset.from_dict({"input_ids": train_rows.astype(np.int64).tolist()})
    proxy = HookedProxyLM(subject.hf, subject.tokenizer, hook_names=[hook])
    logging.getLogger("sae_lens").setLevel(logging.ERROR)
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    runner = LanguageModelSAETrainingRunner(cfg, override_dataset=dataset, override_model=proxy)
    trained = runner.run()
    seconds = time.perf_counter() - t0
    _save(trained, stage)
    sae = SAE.load_from_disk(str(stage), device=str(subject.device))
    fvu, alive = evaluate(sae, subject, hook, held, first_pos)
    report = TrainReport(path=str(out_dir), d_in=d_in, d_sae=width, k=k, hook=hook,
                         training_tokens=int(train_rows[:, first_pos:].size), seconds=round(seconds, 1),
                         fvu=fvu, frac_alive=alive)
    (stage / "train_report.json").write_text(json.dumps(report.__dict__, indent=2))
    _publish(stage, out_dir)
    return report


def _save(sae, folder: Path) -> None:
    """sae-lens's ``save_inference_model`` (``save_model`` for an inference SAE), with cfg.json's keys
    sorted (sae-lens's order varies between processes), so the same training gives the same bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    (getattr(sae, "save_inference_model", None) or sae.save_model)(str(folder))
    cfg = folder / "cfg.json"
    cfg.write_text(json.dumps(json.loads(cfg.read_text()), indent=2, sort_keys=True))


def _publish(staged: Path, final: Path) -> None:
    """Move a finished SAE folder (weights, config, train report) into place with one rename, so
    ``final`` holds a whole SAE or none; a leftover ``final`` without weights is replaced."""
    if (final / SAE_LENS_WEIGHTS).exists():
        shutil.rmtree(staged)
        return
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, final)


def _finish_pass(stage: Path, where: dict[str, Path]) -> None:
    """After a kill: publish every SAE of a training pass that finished (``stage/complete``);
    drop one that did not, whose SAEs are then trained again (from the same seed: the same bytes)."""
    if not stage.exists():
        return
    if (stage / "complete").exists():
        for n in sorted(p.name for p in stage.iterdir() if p.is_dir()):
            if n in where:
                _publish(stage / n, where[n])
    shutil.rmtree(stage)


def train_many(subject, tokens: np.ndarray, specs: dict[str, tuple[str, int]], out_root: Path, *, k: int,
               batch_tokens: int = 512, lr: float = 1e-3, seed: int = 0, heldout_rows: int = 32,
               first_pos: int = 1, subdir: str = "", progress: bool = True) -> dict[str, TrainReport]:
    """Train several TopK SAEs at once (``specs``: name -> (hook, width)) with sae-lens's
    ``MultiSAETrainingRunner``: one forward pass per batch feeds every hook. Each SAE is trained
    exactly as ``train_topk`` trains one (same tokens, batch, lr, dead-latent window) and saved
    in sae-lens format in ``out_root/<name>/<subdir>``. SAEs already there are left alone (not retrained).
    The pass saves into a staging folder, marks it complete, then moves each SAE into place, so a
    kill leaves whole SAEs only, and a rerun finishes the moves or trains the pass again."""
    import datasets
    from sae_lens import LoggingConfig, MultiSAETrainingRunner, MultiSAETrainingRunnerConfig, TopKTrainingSAEConfig
    from sae_lens.load_model import HookedProxyLM

    where = {n: Path(out_root) / n / subdir for n in specs}
    stage = Path(out_root) / (".training" + (f"-{subdir}" if subdir else ""))
    _finish_pass(stage, where)
    todo = {n: hw for n, hw in specs.items() if not (where[n] / SAE_LENS_WEIGHTS).exists()}
    from .remote import needs_local_weights

    needs_local_weights(subject, "Training an SAE")
    n_rows, ctx_len = tokens.shape
    if n_rows <= heldout_rows + 1:
        raise ValueError(f"Need more than {heldout_rows + 1} rows to train, got {n_rows}.")
    train_rows, held = tokens[:-heldout_rows], tokens[-heldout_rows:]
    n_train = int(train_rows[:, first_pos:].size)
    seconds = 0.0
    if todo:
        hooks = sorted({h for h, _ in todo.values()})
        cfg = MultiSAETrainingRunnerConfig(
            saes={n: TopKTrainingSAEConfig(d_in=subject.hook_dim(h), d_sae=w, k=k, dtype="float32", device="cpu",
                                           normalize_activations="expected_average_only_in")
                  for n, (h, w) in todo.items()},
            hook_names={n: h for n, (h, _) in todo.items()},
            model_class_name="AutoModelForCausalLM", model_name=subject.source, dataset_path="autointerp-packed",
            streaming=False, context_size=ctx_len, prepend_bos=False, seqpos_slice=(first_pos, None),
            training_tokens=n_train, train_batch_size_tokens=batch_tokens,
            store_batch_size_prompts=max(1, min(16, batch_tokens // ctx_len)),
            n_batches_in_buffer=4 * -(-batch_tokens // ctx_len), lr=lr, seed=seed, device=str(subject.device),
            logger=LoggingConfig(log_to_wandb=False), n_checkpoints=0, save_final_checkpoint=False,
            checkpoint_path=str(stage / "checkpoints"), output_path=None,
            n_batches_for_norm_estimate=4, dead_feature_window=10)  # as train_topk
        dataset = datasets.Dataset.from_dict({"input_ids": train_rows.astype(np.int64).tolist()})
        proxy = HookedProxyLM(subject.hf, subject.tokenizer, hook_names=hooks)
        logging.getLogger("sae_lens").setLevel(logging.ERROR)
        torch.manual_seed(seed)
        t0 = time.perf_counter()
        trained = MultiSAETrainingRunner(cfg, override_dataset=dataset, override_model=proxy).run()
        seconds = time.perf_counter() - t0
        for n, sae in trained.items():
            _save(sae, stage / n)
            hook, width = todo[n]
            fvu, alive = evaluate(SAE.load_from_disk(str(stage / n), device=str(subject.device)), subject, hook,
                                  held, first_pos)
            rep = TrainReport(path=str(where[n]), d_in=int(sae.cfg.d_in), d_sae=width, k=k, hook=hook,
                              training_tokens=n_train, seconds=round(seconds / len(todo), 1), fvu=fvu,
                              frac_alive=alive)
            (stage / n / "train_report.json").write_text(json.dumps({**rep.__dict__, "trained_with": sorted(todo)},
                                                                    indent=2))
        (stage / "complete").write_text("")
        _finish_pass(stage, where)
    reports = {}
    for n in specs:
        reports[n] = TrainReport(**{k_: v for k_, v in json.loads((where[n] / "train_report.json").read_text()).items()
                                    if k_ in TrainReport.__dataclass_fields__})
    return reports


def loaded_report(sae: SAE, spec: str, subject, hook: str, held: np.ndarray, first_pos: int = 1) -> TrainReport:
    """A ``TrainReport`` for an SAE that was loaded, not trained here: its FVU and alive share
    measured on ``held`` rows of this run (0 training tokens, 0 seconds)."""
    fvu, alive = evaluate(sae, subject, hook, held, first_pos)
    return TrainReport(path=spec, d_in=int(sae.cfg.d_in), d_sae=int(sae.cfg.d_sae), k=int(getattr(sae.cfg, "k", 0) or 0),
                       hook=hook, training_tokens=0, seconds=0.0, fvu=fvu, frac_alive=alive)


def hooked_activations(subject, hook: str, tokens: np.ndarray, batch_size: int = 16) -> torch.Tensor:
    """Outputs of the hooked module for rows of tokens, [n_rows, ctx_len, d] (stops early)."""
    from .models import hooked_output

    outs = []
    for b0 in range(0, len(tokens), batch_size):
        ids = torch.from_numpy(np.ascontiguousarray(tokens[b0:b0 + batch_size])).long()
        outs.append(hooked_output(subject, hook, ids.to(subject.device)).float().cpu())
    return torch.cat(outs)


def evaluate(sae: SAE, subject, hook: str, tokens: np.ndarray, first_pos: int = 1) -> tuple[float, float]:
    """Fraction of variance unexplained and fraction of latents alive on the given rows."""
    x = hooked_activations(subject, hook, tokens)[:, first_pos:].reshape(-1, int(sae.cfg.d_in))
    with torch.inference_mode():
        z = sae.encode(x.to(sae.W_enc.dtype))
        x_hat = sae.decode(z).float()
    fvu = float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())
    alive = float((z > 0).any(0).float().mean())
    return round(fvu, 4), round(alive, 4)


def describe(sae: SAE) -> dict:
    meta = sae.cfg.metadata
    return {"architecture": sae.cfg.architecture(), "d_in": int(sae.cfg.d_in),
            "d_sae": int(sae.cfg.d_sae), "hook_name": getattr(meta, "hook_name", None),
            "model_name": getattr(meta, "model_name", None)}


def for_run(cfg, subject, tokens: np.ndarray, progress: bool = True) -> tuple[SAE, dict]:
    """The run's SAE: trained here once (then reloaded from ``<run>/sae``) or loaded from its source."""
    sae_dir = cfg.path.sae_dir
    if cfg.sae == "train":
        if not (sae_dir / SAE_LENS_WEIGHTS).exists():
            rows = tokens[: max(cfg.train_tokens // cfg.ctx_len, 1)]
            train_topk(subject, rows, cfg.hook, sae_dir, width=cfg.sae_width, k=cfg.sae_k,
                       batch_tokens=cfg.train_batch_tokens, seed=cfg.seed, progress=progress)
        sae = load(str(sae_dir), device=cfg.device, dtype=cfg.dtype)
        info = json.loads((sae_dir / "train_report.json").read_text())
    else:
        sae = load(cfg.sae, device=cfg.device, dtype=cfg.dtype)
        info = {}
    check_fits(sae, subject, cfg.hook)
    return sae, {"source": cfg.sae, **describe(sae), **info}
