"""Write moeframe/data/sample.txt: the docstrings of a fixed list of stdlib modules.

The text trains the tiny checkpoints' tokenizer and is the default text of the
perplexity workload. It is produced once and committed, so its bytes do not
depend on the Python a later reader has; rerunning on another Python version
may give slightly different text. Sources are parsed, never imported.

    python tools/make_sample_text.py [--out moeframe/data/sample.txt]
"""

from __future__ import annotations

import argparse
import ast
import inspect
import sysconfig
from pathlib import Path

MODULES = sorted(
    [
        "argparse", "ast", "asyncio/events", "asyncio/tasks", "base64", "bisect", "calendar",
        "collections/__init__", "contextlib", "csv", "dataclasses", "datetime", "decimal",
        "email/message", "enum", "fractions", "ftplib", "functools", "gettext",
        "glob", "gzip", "heapq", "hmac", "imaplib", "json/__init__",
        "locale", "logging/__init__", "mailbox", "os", "pathlib", "pickle", "pprint", "queue",
        "random", "shutil", "smtplib", "socket", "statistics", "string", "subprocess",
        "tarfile", "tempfile", "textwrap", "threading", "unittest/case",
        "urllib/parse", "uuid", "warnings", "weakref", "zipfile",
    ]
)


def module_docstrings(path: Path) -> list[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    try:
        source = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return []
    tree = ast.parse(source)
    nodes = [tree] + [
        node
        for node in ast.walk(tree)
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
    ]
    nodes.sort(key=lambda node: getattr(node, "lineno", 0))
    docs = [ast.get_docstring(node, clean=False) for node in nodes]
    return [inspect.cleandoc(doc) for doc in docs if doc and len(doc) > 40]


def sample_text() -> str:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in MODULES:
        parts.extend(module_docstrings(stdlib / f"{name}.py"))
    return "\n\n".join(parts) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[1] / "moeframe" / "data" / "sample.txt"
    parser.add_argument("--out", type=Path, default=default)
    args = parser.parse_args()
    text = sample_text()
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {len(text.encode())} bytes to {args.out}")


if __name__ == "__main__":
    main()
