"""The training text: Python source files, filtered, deduplicated, split by file.

Every machine moeframe runs on has a Python interpreter, so its standard
library (and, on a machine that trains a larger model, its installed packages)
is text that needs no download. Code with its docstrings and comments is a
real language-modelling task with a long tail, enough for routers to
specialise. Two sources:

- ``shipped``: ``moeframe/data/corpus/stdlib.jsonl.xz``, a fixed selection of
  CPython 3.11's standard library made once by ``tools/train_moe.py corpus``;
  the same bytes on every machine, so the tiny presets retrain identically.
- ``python``: the running interpreter's standard library and site-packages,
  read at training time; the model card records the interpreter and the
  corpus hash, since another Python gives other text.

Held-out text is chosen by file (a hash of the file's path), never by lines
of a file that is also trained on, so held-out perplexity measures text the
model never saw (as GPT-2's WebText deduplication against its test sets and
The Pile's held-out components do at document level).
"""

from __future__ import annotations

import hashlib
import json
import lzma
import site
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

# Folders of generated tables, test suites, vendored copies and data-only modules.
SKIPPED_PARTS = frozenset(
    {
        "test", "tests", "testing", "idlelib", "lib2to3", "pydoc_data", "encodings", "turtledemo",
        "ensurepip", "__pycache__", "site-packages", "dist-packages", "_vendor", "vendor", "vendored", "third_party", "benchmarks",
        "config-3.11-x86_64-linux-gnu", "config-3.12-x86_64-linux-gnu",
    }
)
MIN_CHARS = 1_000
MAX_CHARS = 200_000
MAX_LINE_CHARS = 300  # longer lines are data tables or minified code
MIN_ASCII_FRACTION = 0.98
SHIPPED_CORPUS = "corpus/stdlib.jsonl.xz"


@dataclass(frozen=True)
class Document:
    """One source file: its path relative to the root it was found under, and its text."""

    path: str
    text: str


def normalise(text: str) -> str:
    """Trailing spaces dropped, line ends unified: two copies differing only there are one document."""
    return "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").splitlines()).strip() + "\n"


def keep(text: str) -> bool:
    """Ordinary hand-written source: not tiny, not huge, no data-table lines, nearly all ASCII."""
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        return False
    if max(len(line) for line in text.splitlines()) > MAX_LINE_CHARS:
        return False
    return sum(ch.isascii() for ch in text) >= MIN_ASCII_FRACTION * len(text)


def python_files(root: Path) -> Iterator[tuple[str, Path]]:
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if not SKIPPED_PARTS.intersection(rel.parts[:-1]) and not rel.name.startswith("test_"):
            yield rel.as_posix(), path


def read_sources(roots: Iterable[tuple[str, Path]]) -> list[Document]:
    """Filtered, exactly deduplicated (after normalising) documents of every (label, root), in path order.

    Paths are named ``label/relative path``: the label, not the versioned
    folder name, so the held-out split of a file is the same on every Python.
    """
    seen: set[str] = set()
    docs: list[Document] = []
    for label, root in roots:
        for rel, path in python_files(root):
            try:
                text = normalise(path.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, OSError):
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest in seen or not keep(text):
                continue
            seen.add(digest)
            docs.append(Document(f"{label}/{rel}", text))
    return docs


def interpreter_roots(site_packages: bool) -> list[tuple[str, Path]]:
    """The running interpreter's stdlib folder, and its site-packages folders if asked."""
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    if site_packages:
        roots += [("site-packages", Path(p)) for p in site.getsitepackages() if Path(p).is_dir()]
    return roots


def sample_by_hash(docs: list[Document], max_chars: int | None, salt: str = "select") -> list[Document]:
    """A deterministic subset under ``max_chars`` picked by path hash (no bias toward any folder), path-ordered."""
    if max_chars is None:
        return docs
    chosen, total = [], 0
    for doc in sorted(docs, key=lambda d: path_hash(d.path, salt)):
        if total + len(doc.text) > max_chars:
            continue
        chosen.append(doc)
        total += len(doc.text)
    return sorted(chosen, key=lambda d: d.path)


def path_hash(path: str, salt: str) -> float:
    """A number in [0, 1) fixed by the path alone, the same on every machine."""
    digest = hashlib.sha256(f"{salt}/{path}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_file(docs: list[Document], heldout_fraction: float) -> tuple[list[Document], list[Document]]:
    """(train, held-out): a file is held out when its path hashes below ``heldout_fraction``."""
    heldout = [d for d in docs if path_hash(d.path, "heldout") < heldout_fraction]
    train = [d for d in docs if path_hash(d.path, "heldout") >= heldout_fraction]
    if not train or not heldout:
        raise ValueError(f"{len(docs)} documents give an empty split at heldout_fraction={heldout_fraction}")
    return train, heldout


def corpus_hash(docs: Iterable[Document]) -> str:
    h = hashlib.sha256()
    for doc in docs:
        h.update(doc.path.encode() + b"\0" + doc.text.encode() + b"\0")
    return h.hexdigest()[:16]


def write_jsonl_xz(docs: Iterable[Document], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps({"path": d.path, "text": d.text}) + "\n" for d in docs)
    out.write_bytes(lzma.compress(lines.encode(), preset=9 | lzma.PRESET_EXTREME))


def read_jsonl_xz(data: bytes) -> list[Document]:
    return [Document(**json.loads(line)) for line in lzma.decompress(data).decode().splitlines()]


def shipped_documents() -> list[Document]:
    return read_jsonl_xz(resources.files("moeframe.data").joinpath(SHIPPED_CORPUS).read_bytes())


def load_documents(source: str, max_chars: int | None) -> list[Document]:
    """The documents of a corpus source: ``shipped``, ``stdlib`` or ``python`` (stdlib + site-packages)."""
    if source == "shipped":
        docs = shipped_documents()
    elif source in ("stdlib", "python"):
        docs = read_sources(interpreter_roots(site_packages=source == "python"))
    else:
        raise ValueError(f"corpus: unknown source '{source}'; valid sources: shipped, stdlib, python")
    return sample_by_hash(docs, max_chars)


def describe(source: str) -> str:
    if source == "shipped":
        return f"moeframe/data/{SHIPPED_CORPUS}: a fixed selection of CPython 3.11 standard-library sources"
    where = "standard library" + (" and site-packages" if source == "python" else "")
    return f"the {where} of Python {sys.version.split()[0]} at {sys.prefix}"
