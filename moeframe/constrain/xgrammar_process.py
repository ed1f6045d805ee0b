"""The xgrammar compiler process: run as a script by :class:`moeframe.constrain.compile_worker.CompileWorker`.

    python xgrammar_process.py READ_FD WRITE_FD MEMORY_MB

It imports xgrammar only (not moeframe, whose import pulls in the whole
engine), builds one GrammarCompiler from the vocabulary it is sent, caps its
own address space at its size then plus MEMORY_MB, and compiles what it is
sent, answering only whether it could. The parent then compiles the same
text itself, now known to finish within the budget: sending the grammar
back instead (``serialize_json``) costs more than compiling it twice (a
13 MB JSON and 2.6 s for a schema that compiles in 0.03 s).
"""

from __future__ import annotations

import json
import resource
import sys
from multiprocessing.connection import Connection

import xgrammar as xgr


class GrammarCompilerProcess:
    """Text in, whether it compiles within the budget out."""

    def __init__(self, token_bytes: list[bytes], vocab_size: int, eos_token_ids: tuple[int, ...], max_threads: int,
                 max_whitespace: int) -> None:
        info = xgr.TokenizerInfo(list(token_bytes), xgr.VocabType.RAW, vocab_size=vocab_size,
                                 stop_token_ids=list(eos_token_ids))
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads, cache_enabled=False)
        self.max_whitespace = max_whitespace

    def compile(self, kind: str, text: str) -> None:
        compile_text(self.compiler, self.max_whitespace, kind, text)


def compile_text(compiler: xgr.GrammarCompiler, max_whitespace: int, kind: str, text: str) -> xgr.CompiledGrammar:
    """``text`` (a JSON schema, regex, structural tag or EBNF grammar) compiled as our backend does."""
    if kind == "json_schema":
        if max_whitespace == 0:
            return compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))
        return compiler.compile_json_schema(text, any_whitespace=True, max_whitespace_cnt=max_whitespace)
    if kind == "regex":
        return compiler.compile_regex(text)
    if kind == "structural_tag":
        return compiler.compile_structural_tag(schema_contents_as_grammars(text, max_whitespace))
    return compiler.compile_grammar(text)

def schema_contents_as_grammars(text: str, max_whitespace: int) -> str:
    """A structural tag whose tags' JSON-schema contents are grammars with the configured whitespace.

    xgrammar's ``json_schema`` content format takes no compact separators
    (its ``max_whitespace_cnt`` must be positive), so each schema is
    converted as ``compile_json_schema`` would convert it.
    """
    tag = json.loads(text)
    for item in tag["format"]["tags"]:
        if item["content"].get("type") == "json_schema":
            schema = json.dumps(item["content"]["json_schema"])
            if max_whitespace == 0:
                grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=False, separators=(",", ":"))
            else:
                grammar = xgr.Grammar.from_json_schema(schema, any_whitespace=True, max_whitespace_cnt=max_whitespace)
            item["content"] = {"type": "grammar", "grammar": str(grammar)}
    return json.dumps(tag)


def serve(read_fd: int, write_fd: int, memory_mb: int) -> None:
    recv, send = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        server = GrammarCompilerProcess(*recv.recv())
    except Exception as err:  # reported to the parent, which refuses the request that started us
        send.send(("error", f"{type(err).__name__}: {err}"))
        return
    with open("/proc/self/statm") as f:
        limit = int(f.read().split()[0]) * resource.getpagesize() + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    send.send(("ready", None))
    while True:
        try:
            method, args = recv.recv()
        except EOFError:
            return
        try:
            send.send(("ok", getattr(server, method)(*args)))
        except MemoryError:
            send.send(("budget", f"compiling passed the memory budget of {memory_mb} MB (compile_memory_mb)"))
        except Exception as err:  # xgrammar reports bad input as RuntimeError/ValueError subclasses
            out_of_memory = "bad_alloc" in str(err)
            message = f"compiling passed the memory budget of {memory_mb} MB (compile_memory_mb)" if out_of_memory else str(err).strip()
            send.send(("budget" if out_of_memory else "refused", message))


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
