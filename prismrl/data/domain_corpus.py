"""Domain text for masked-LM pre-training: shipped corpora, passage splitting, cached splits, domain tokens.

Built-in corpora (``CORPORA``), both real text that an installed package ships, so nothing is downloaded:

- ``python_docs`` (default, no extra dependency): the Python language reference and built-in type docs
  that CPython ships as ``pydoc_data.topics`` (79 topics, ~65k words on 3.11) — technical prose with
  code, a domain far from the web text general encoders are trained on.
- ``lee_news``: the Lee corpus of 350 Australian Broadcasting Corporation news articles (~70k words)
  that gensim ships as test data (``lee_background.cor`` + ``lee.cor``); needs ``pip install gensim``
  (the files are read directly, gensim is never imported).

Building a split: each document is cut into paragraphs (blank lines), whitespace is collapsed and
heading underlines are dropped; a paragraph seen before (pydoc topics repeat each other) is kept only
at its first occurrence; consecutive paragraphs are packed into passages of at most ``passage_words``
words (longer paragraphs are cut into word windows) and passages under ``min_words`` are dropped.
Whole documents go to the held-out split (seeded order) until it holds ``val_fraction`` of the
passages, so no held-out paragraph occurs in the training text. The splits are written once as
``train.txt`` / ``val.txt`` (one passage per line) under a content-keyed cache directory.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from prismrl.cache import cache_damage, cache_dir, content_key, publish_cache_dir
from prismrl.choices import package_folder

CORPUS_VERSION = 1
_MANIFEST = "manifest.json"
_UNDERLINE = re.compile(r"^\s*([*=\-~^#])\1{2,}\s*$")


def python_docs_documents() -> dict[str, str]:
    """CPython's shipped reference topics: {topic name: text}."""
    from pydoc_data.topics import topics

    return {name: topics[name] for name in sorted(topics)}


def gensim_test_data_dir() -> Path:
    """The folder of gensim's shipped test data (found without importing gensim)."""
    return package_folder("gensim", "corpus 'lee_news'", install="pip install gensim") / "test" / "test_data"


def lee_documents(folder: str | Path | None = None) -> dict[str, str]:
    """The Lee news corpus, one article per line of ``lee_background.cor`` and ``lee.cor``."""
    folder = Path(folder) if folder is not None else gensim_test_data_dir()
    documents: dict[str, str] = {}
    for name in ("lee_background.cor", "lee.cor"):
        path = folder / name
        if not path.is_file():
            raise FileNotFoundError(f"corpus 'lee_news': expected the file {path}")
        lines = path.read_text(encoding="latin-1").splitlines()
        documents.update({f"{name}:{i}": line for i, line in enumerate(lines) if line.strip()})
    return documents


CORPORA: dict[str, Callable[[], dict[str, str]]] = {
    "python_docs": python_docs_documents,
    "lee_news": lee_documents,
}


def paragraphs(text: str) -> list[str]:
    """Blank-line separated paragraphs with whitespace collapsed; heading underlines removed."""
    blocks = re.split(r"\n\s*\n", text)
    kept = [" ".join(line for line in block.splitlines() if not _UNDERLINE.match(line)) for block in blocks]
    return [" ".join(block.split()) for block in kept if block.split()]


def pack_passages(paras: Sequence[str], passage_words: int, min_words: int) -> list[str]:
    """Greedily join consecutive paragraphs into passages of <= passage_words words; drop short ones."""
    if passage_words < 1 or min_words < 1:
        raise ValueError(f"passage_words / min_words: expected ints >= 1, received {passage_words} / {min_words}")
    pieces: list[list[str]] = []
    for para in paras:
        words = para.split()
        pieces.extend(words[i : i + passage_words] for i in range(0, len(words), passage_words))
    passages: list[str] = []
    current: list[str] = []
    for words in pieces:
        if current and len(current) + len(words) > passage_words:
            passages.append(" ".join(current))
            current = []
        current = current + words
    if current:
        passages.append(" ".join(current))
    return [p for p in passages if len(p.split()) >= min_words]


def split_documents(
    documents: dict[str, str], passage_words: int, min_words: int, val_fraction: float, seed: int
) -> tuple[list[str], list[str]]:
    """(train passages, held-out passages): deduplicated paragraphs, whole documents held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction: expected a value in (0, 1), received {val_fraction!r}")
    seen: set[str] = set()
    per_document: dict[str, list[str]] = {}
    for name, text in documents.items():
        fresh = [p for p in paragraphs(text) if p not in seen]
        seen.update(fresh)
        per_document[name] = pack_passages(fresh, passage_words, min_words)
    names = [name for name in documents if per_document[name]]
    total = sum(len(per_document[name]) for name in names)
    order = np.random.default_rng(seed).permutation(len(names))
    train, val = [], []
    for i in order:
        target = val if len(val) < val_fraction * total else train
        target.extend(per_document[names[i]])
    if not train or not val:
        raise ValueError(f"corpus: {len(names)} documents give {len(train)} train / {len(val)} held-out passages; need both")
    return train, val


@dataclass(frozen=True)
class DomainCorpus:
    """One built copy of a corpus split: passage files and counts."""

    root: Path
    train_path: Path
    val_path: Path
    num_train: int
    num_val: int
    corpus: str

    def train_texts(self) -> list[str]:
        return read_lines(self.train_path)

    def val_texts(self) -> list[str]:
        return read_lines(self.val_path)


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file."""
    return [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _corpus_at(folder: Path) -> DomainCorpus:
    manifest = json.loads((folder / _MANIFEST).read_text())
    return DomainCorpus(folder, folder / "train.txt", folder / "val.txt", manifest["num_train"], manifest["num_val"], manifest["corpus"])


def ensure_domain_corpus(
    corpus: str = "python_docs",
    root: str | Path | None = None,
    passage_words: int = 64,
    min_words: int = 8,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> DomainCorpus:
    """Return the cached split of ``corpus``, building it first when absent (about a second).

    Cache key: hash(builder version, corpus name, sha256 of the source documents, split settings), under
    ``<root or cache_root()>/domain_corpus/``. The build writes a private temp dir and publishes it with
    one atomic rename.
    """
    if corpus not in CORPORA:
        raise ValueError(f"corpus: expected one of {sorted(CORPORA)}, received {corpus!r}")
    documents = CORPORA[corpus]()
    digest = hashlib.sha256(json.dumps(documents, sort_keys=True).encode()).hexdigest()[:16]
    parts = dict(version=CORPUS_VERSION, corpus=corpus, source=digest, passage_words=passage_words,
                 min_words=min_words, val_fraction=val_fraction, seed=seed)
    final = cache_dir("domain_corpus", **parts) if root is None else Path(root) / "domain_corpus" / content_key(**parts)
    if cache_damage(final, _MANIFEST) is None:  # skip the split when a whole copy exists
        return _corpus_at(final)
    train, val = split_documents(documents, passage_words, min_words, val_fraction, seed)

    def build(tmp: Path) -> None:
        (tmp / "train.txt").write_text("\n".join(train) + "\n", encoding="utf-8")
        (tmp / "val.txt").write_text("\n".join(val) + "\n", encoding="utf-8")
        manifest = {**parts, "num_train": len(train), "num_val": len(val), "num_documents": len(documents)}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))  # written last: marks a complete build

    return _corpus_at(publish_cache_dir(final, build, _MANIFEST))


def with_domain_prefix(texts: Sequence[str], domain_tokens: Sequence[str]) -> list[str]:
    """``"<D1> <D2> text"`` for each text (unchanged when there are no domain tokens)."""
    prefix = " ".join(domain_tokens)
    return [f"{prefix} {text}" if prefix else text for text in texts]


__all__ = [
    "CORPORA",
    "DomainCorpus",
    "ensure_domain_corpus",
    "lee_documents",
    "pack_passages",
    "paragraphs",
    "python_docs_documents",
    "split_documents",
    "with_domain_prefix",
]
