"""The subject model: embedded SmolLM2 (from a gguf), a local HF folder, or a hub id; nnsight-wrapped.

Hook points are module paths in the Hugging Face model, e.g. ``model.layers.8`` (residual stream
after block 8) or ``model.layers.8.mlp`` (MLP output): the module's output. A path ending in
``.input`` is the module's first input, as in nnsight (``model.layers.8.mlp.down_proj.input``: the
MLP's hidden activation, the neurons). The same paths name nnsight envoys.
"""
from __future__ import annotations

import difflib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import EMBEDDED_MODEL
from .paths import HubUnreachable, data_dir, embedded_gguf, hub_reachable

EMBEDDED_NAME = "SmolLM2-135M-Instruct"
INPUT = ".input"


def split_hook(hook: str) -> tuple[str, bool]:
    """``(module path, reads the module's input)``: ``"a.b.input"`` -> ``("a.b", True)``."""
    return (hook.removesuffix(INPUT), True) if hook.endswith(INPUT) else (hook, False)


def layer_of(hook: str) -> int:
    """The block index of a Llama-family hook path (``model.layers.N`` or below it)."""
    import re

    m = re.fullmatch(r"model\.layers\.(\d+)(\..+)?", hook)
    if not m:
        raise ValueError(f"hook {hook!r}: this needs a 'model.layers.N[...]' hook path.")
    return int(m.group(1))


def neuron_hook(layer: int) -> str:
    """The MLP hidden activation (input of the down projection) of a Llama-family block."""
    return f"model.layers.{layer}.mlp.down_proj{INPUT}"


def mlp_output_hook(subject: "SubjectModel", layer: int) -> str:
    """A block's MLP output as the SAE literature reads it (TransformerLens's ``hook_mlp_out``, on
    which e.g. Gemma Scope's MLP SAEs were trained): after the post-MLP norm where the block has
    one (Gemma 2/3), else the MLP module's own output (Llama family, SmolLM2)."""
    post = f"model.layers.{layer}.post_feedforward_layernorm"
    try:
        subject.hf.get_submodule(post)
        return post
    except AttributeError:
        return f"model.layers.{layer}.mlp"


@dataclass
class SubjectModel:
    """A causal LM, its tokenizer and its nnsight wrapper, plus where it came from."""

    hf: torch.nn.Module
    tokenizer: object
    name: str  # what the user asked for ("embedded", a folder, a hub id)
    source: str  # the folder or id it was actually loaded from
    _nn: object | None = None
    remote: bool = False  # traces run on NDIF (nnsight remote execution); ``hf`` holds no weights

    @property
    def nn(self):
        """nnsight wrapper (TransformersModel) around the same weights; built on first use."""
        if self._nn is None:
            # nnsight gives every class a ``save`` attribute when imported; anyio's asyncio backend
            # (which the LLM client's httpx loads lazily, on its first request) then refuses to
            # define its typed attribute sets. Load that backend first, so a judge still works in
            # a process that has used nnsight (chapter 08 does both).
            import anyio._backends._asyncio  # noqa: F401
            import nnsight

            self._nn = nnsight.TransformersModel(self.hf, tokenizer=self.tokenizer,
                                                 task="text-generation")
        return self._nn

    def module(self, hook: str) -> torch.nn.Module:
        """The torch module at a hook path (``.input`` dropped), with a clear error listing close names."""
        path, _ = split_hook(hook)
        try:
            return self.hf.get_submodule(path)
        except AttributeError:
            m = re.match(r"^(.*layers)\.(\d+)(\.|$)", path)
            if m and int(m.group(2)) >= self.n_layers:
                raise ValueError(f"Layer {m.group(2)} of hook {hook!r} is out of range: {self.name} has "
                                 f"{self.n_layers} layers (0-{self.n_layers - 1}).") from None
            names = [n for n, _ in self.hf.named_modules() if n]
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
            raise ValueError(
                f"Unknown hook {hook!r} in {self.name}: no module has that path. "
                f"Close matches: {close or names[:5]}. Hooks are module paths such as "
                f"'model.layers.8' (residual), 'model.layers.8.mlp' (MLP output) or "
                f"'{neuron_hook(8)}' (neurons)."
            ) from None

    def envoy(self, hook: str):
        """The nnsight envoy of a hook's module (``model.layers.8`` -> ``nn.model.layers[8]``);
        read ``.input`` or ``.output`` on it as ``split_hook(hook)`` says."""
        self.module(hook)
        node = self.nn
        for part in split_hook(hook)[0].split("."):
            node = node[int(part)] if part.isdigit() else getattr(node, part)
        return node

    def hook_dim(self, hook: str) -> int:
        """Width of the hooked output (or input), read off one tiny forward."""
        if self.remote:  # no local weights: one remote trace
            return int(hooked_output(self, hook, torch.tensor([[self.tokenizer.bos_token_id or 0]])).shape[-1])
        seen: list[int] = []

        def grab(_m, inp, out=None):
            x = inp[0] if out is None else out
            seen.append((x[0] if isinstance(x, tuple) else x).shape[-1])
            raise _Stop

        module = self.module(hook)
        handle = (module.register_forward_pre_hook(grab) if split_hook(hook)[1]
                  else module.register_forward_hook(grab))
        try:
            with torch.inference_mode():
                self.hf(torch.tensor([[self.tokenizer.eos_token_id or 0]], device=self.device))
        except _Stop:
            pass
        finally:
            handle.remove()
        return seen[0]

    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def n_layers(self) -> int:
        return int(self.hf.config.num_hidden_layers)

    def describe(self) -> dict:
        cfg = self.hf.config
        return {"name": self.name, "source": self.source, "architecture": type(self.hf).__name__,
                "n_layers": cfg.num_hidden_layers, "d_model": cfg.hidden_size,
                "d_mlp": getattr(cfg, "intermediate_size", None), "vocab": cfg.vocab_size,
                "n_params": sum(p.numel() for p in self.hf.parameters())}


def hooked_output(subject, hook: str, input_ids: torch.Tensor) -> torch.Tensor:
    """Output (or, for a ``.input`` hook, input) of the hooked module, [B, T, d]; the forward
    stops there (nnsight ``tracer.stop``)."""
    envoy, on_input = subject.envoy(hook), split_hook(hook)[1]
    with torch.inference_mode():
        with subject.nn.trace(input_ids, remote=subject.remote) as tracer:
            out = envoy.input if on_input else envoy.output
            hidden = (out[0] if isinstance(out, tuple) else out).save()
            tracer.stop()
    return hidden


class _Stop(Exception):
    """Raised inside a forward hook to stop the forward early."""


def for_run(cfg) -> SubjectModel:
    """The run's subject model, as its settings say (model, device, dtype, remote)."""
    return load(cfg.model, device=cfg.device, dtype=cfg.dtype, remote=cfg.remote)


def load(spec: str = EMBEDDED_MODEL, *, device: str = "cpu", dtype: str = "float32",
         remote: bool = False) -> SubjectModel:
    """Load the subject model: ``"embedded"``, a local HF folder, or a hub id. ``device="auto"``
    spreads the layers over every GPU (``device_map="auto"``, for models one device cannot hold);
    ``remote=True`` runs its traces on NDIF (``remote.py``) and loads no weights here."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if remote:
        from .remote import load_remote

        return load_remote(spec, dtype=dtype)
    torch_dtype = getattr(torch, dtype)
    if spec == EMBEDDED_MODEL:
        source = str(embedded_model_dir())
    elif Path(spec).expanduser().is_dir():
        source = str(Path(spec).expanduser().resolve())
    elif Path(spec).expanduser().exists() or spec.startswith((".", "/", "~")):
        raise ValueError(f"Model folder {spec!r} does not exist (or is not a folder).")
    else:
        source = spec
        if not hub_reachable():
            raise HubUnreachable(_hub_hint(spec, "the hub is unreachable from this machine"))
    try:
        tok = AutoTokenizer.from_pretrained(source)
        hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype,
                                                  device_map="auto" if device == "auto" else None)
    except OSError as err:
        if source != spec:
            raise
        raise RuntimeError(_hub_hint(spec, f"{type(err).__name__}: {err}")) from err
    if device != "auto":  # with a device map, accelerate has placed every layer already
        hf.to(device)
    hf.eval()
    return SubjectModel(hf=hf, tokenizer=tok, name=spec, source=source)


def randomly_initialised(subject: SubjectModel, seed: int = 0) -> SubjectModel:
    """A copy of ``subject`` with the same architecture and tokenizer and freshly initialised
    weights (the model class's own init, seeded): the random-model control of METHODS §6."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    dtype = next(subject.hf.parameters()).dtype
    hf = AutoModelForCausalLM.from_config(subject.hf.config, dtype=dtype)
    hf.to(subject.device).eval()
    return SubjectModel(hf=hf, tokenizer=subject.tokenizer, name=f"{subject.name} (random init, seed {seed})",
                        source=subject.source)


def _hub_hint(spec: str, why: str) -> str:
    return (f"Could not load model {spec!r} from the Hugging Face hub ({why}). On a machine with "
            f"access run `hf download {spec} --local-dir SOME/FOLDER`, copy the folder here and pass "
            "model='SOME/FOLDER'; or use model='embedded'.")


def embedded_model_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors under data/models, converted once from the gguf."""
    out = data_dir() / "models" / EMBEDDED_NAME
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    convert_gguf(embedded_gguf(), out)
    return out


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a gguf with transformers and save it as a plain HF folder (atomic)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # save_pretrained refuses gguf-quantised models: rebuild from a config without quantization.
    cfg_dict = loaded.config.to_dict()
    cfg_dict.pop("quantization_config", None)
    cfg = AutoConfig.for_model(**cfg_dict)
    fresh = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    missing, unexpected = fresh.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:
        raise RuntimeError(f"gguf conversion mismatch: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        fresh.tie_weights()
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    fresh.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "autointerp_source.json").write_text(json.dumps({"converted_from": name}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
