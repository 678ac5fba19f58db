"""Text sources and token packing.

Sources (the ``corpus`` setting):
- ``stdlib`` (default, always offline): pydoc's topic help plus the docstrings of the standard
  library's modules, classes and functions, read with ``ast`` (nothing is imported).
- ``stdlib+code``: the same plus the standard library's source files as text.
- ``textdir:PATH``: every ``.txt``/``.md``/``.rst`` file under a folder (one document per file).
- ``hf:NAME[:SPLIT]``: a Hugging Face dataset's ``text`` column (needs the hub).

Documents are shuffled with a fixed seed, tokenised, joined by the end-of-text token and packed
into rows of ``ctx_len`` tokens, each row starting with the BOS token. Position 0 is the model's
attention sink (its residual norm is ~4x the others in SmolLM2), so the cache and the SAE skip it.
The token array's content hash goes with the run.
"""
from __future__ import annotations

import ast
import hashlib
import random
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXT_SUFFIXES = (".txt", ".md", ".rst")


@dataclass(frozen=True)
class Document:
    source: str  # where it came from, e.g. "pydoc:topics/assert" or a file path
    text: str


@dataclass(frozen=True)
class PackedCorpus:
    """Rows of token ids ready for the model, plus how they were made."""

    tokens: np.ndarray  # int32 [n_rows, ctx_len]
    spec: str
    seed: int
    n_documents: int
    content_hash: str  # sha256 of spec, tokenizer name and the token bytes
    first_pos: int = 1  # positions before this are BOS, never cached or trained on

    @property
    def n_tokens(self) -> int:
        return int(self.tokens.size)


def load_documents(spec: str) -> list[Document]:
    """Read every document of a corpus spec (see module docstring)."""
    if spec == "stdlib":
        docs = _pydoc_topics() + _stdlib_docstrings()
    elif spec == "stdlib+code":
        docs = _pydoc_topics() + _stdlib_docstrings() + _stdlib_source()
    elif spec.startswith("textdir:"):
        docs = _text_dir(Path(spec.removeprefix("textdir:")).expanduser())
    elif spec.startswith("hf:"):
        docs = _hf_dataset(spec.removeprefix("hf:"))
    else:
        raise ValueError(
            f"Unknown corpus {spec!r}: use 'stdlib', 'stdlib+code', 'textdir:/some/folder' or "
            "'hf:DATASET[:SPLIT]'."
        )
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise ValueError(f"Corpus {spec!r} holds no text: point it at a source with documents.")
    return docs


def pack(docs: list[Document], tokenizer, ctx_len: int, n_tokens: int, seed: int,
         spec: str = "") -> PackedCorpus:
    """Shuffle documents (seeded), tokenise, join with EOS and cut into BOS-led rows of ``ctx_len``.

    Stops tokenising as soon as ``n_tokens`` (rounded down to whole rows) are collected; raises
    when the corpus is smaller than asked, saying how many tokens it holds.
    """
    n_rows = n_tokens // ctx_len
    if n_rows < 1 or ctx_len < 2:
        raise ValueError(f"n_tokens ({n_tokens}) must hold at least one row of ctx_len ({ctx_len}) >= 2.")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    sep = tokenizer.eos_token_id
    need = n_rows * (ctx_len - 1)
    chunks: list[list[int]] = []
    have = 0
    used = 0
    for i in order:
        ids = tokenizer(docs[i].text, add_special_tokens=False)["input_ids"]
        if not ids:
            continue
        chunks.append(ids + ([sep] if sep is not None else []))
        have += len(chunks[-1])
        used += 1
        if have >= need:
            break
    if have < need:
        raise ValueError(
            f"Corpus {spec or '(documents)'} has only {have:,} tokens but n_tokens asks for {need:,}: "
            f"lower n_tokens to at most {have // (ctx_len - 1) * ctx_len:,} or use a larger corpus."
        )
    flat = np.fromiter((t for c in chunks for t in c), dtype=np.int32, count=have)[:need]
    tokens = np.empty((n_rows, ctx_len), np.int32)
    tokens[:, 0] = bos
    tokens[:, 1:] = flat.reshape(n_rows, ctx_len - 1)
    h = hashlib.sha256()
    h.update(f"{spec}|{getattr(tokenizer, 'name_or_path', '')}|{seed}|{ctx_len}".encode())
    h.update(tokens.tobytes())
    return PackedCorpus(tokens=tokens, spec=spec, seed=seed, n_documents=used,
                        content_hash=h.hexdigest())


def load_and_pack(spec: str, tokenizer, ctx_len: int, n_tokens: int, seed: int) -> PackedCorpus:
    return pack(load_documents(spec), tokenizer, ctx_len, n_tokens, seed, spec=spec)


# --- sources -------------------------------------------------------------------------------

def _pydoc_topics() -> list[Document]:
    from pydoc_data.topics import topics

    return [Document(f"pydoc:topics/{name}", text) for name, text in sorted(topics.items())]


def _stdlib_files() -> Iterator[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__", "turtledemo"}
    for path in sorted(root.rglob("*.py")):
        if not skip.intersection(path.relative_to(root).parts):
            yield path


def _docstrings(tree: ast.AST) -> Iterator[str]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc and len(doc) > 40:
                yield doc


def _stdlib_docstrings() -> list[Document]:
    docs = []
    for path in _stdlib_files():
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        text = "\n\n".join(_docstrings(tree))
        if text:
            docs.append(Document(f"stdlib-doc:{path.stem}", text))
    return docs


def _stdlib_source() -> list[Document]:
    docs = []
    for path in _stdlib_files():
        try:
            docs.append(Document(f"stdlib-src:{path.name}", path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, ValueError):
            continue
    return docs


def _text_dir(folder: Path) -> list[Document]:
    if not folder.is_dir():
        raise ValueError(f"textdir corpus: {folder} is not a folder: point corpus='textdir:...' at a folder of text files.")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in TEXT_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"textdir corpus: no {'/'.join(TEXT_SUFFIXES)} files under {folder}: put text files "
                         "there, or point corpus='textdir:...' at another folder.")
    return [Document(str(p.relative_to(folder)), p.read_text(encoding="utf-8", errors="replace"))
            for p in files]


def _hf_dataset(name_split: str) -> list[Document]:
    name, _, split = name_split.partition(":")
    from .paths import HubUnreachable, hub_reachable

    if not hub_reachable():
        raise HubUnreachable(
            f"Could not read Hugging Face dataset {name!r}: the hub is unreachable from this machine. "
            "Use corpus='stdlib' or corpus='textdir:/folder/of/txt/files' with text you have locally."
        )
    try:
        import datasets

        ds = datasets.load_dataset(name, split=split or "train", streaming=True)
        docs = []
        for i, row in enumerate(ds):
            docs.append(Document(f"hf:{name}/{i}", row["text"]))
            if i >= 200_000:
                break
        return docs
    except Exception as err:  # noqa: BLE001 - offline, missing dataset, missing column
        raise RuntimeError(
            f"Could not read Hugging Face dataset {name!r} ({type(err).__name__}: {err}). "
            "The hub may be unreachable from this machine: use corpus='stdlib' or "
            "corpus='textdir:/folder/of/txt/files' with text you have locally."
        ) from err


def for_run(cfg, tokenizer) -> PackedCorpus:
    """The run's packed corpus: enough rows for both SAE training and the cache (deterministic)."""
    return load_and_pack(cfg.corpus, tokenizer, cfg.ctx_len, max(cfg.n_tokens, cfg.train_tokens),
                         cfg.seed)
