"""The xgrammar compiler process: run as a script by :class:`moeframe.constrain.compile_worker.CompileWorker`.

    python xgrammar_process.py READ_FD WRITE_FD MEMORY_MB

It imports xgrammar only (not moeframe, whose import pulls in the whole
engine), builds one GrammarCompiler from the vocabulary it is sent, caps its
own address space at its size then plus MEMORY_MB, and answers compile calls
with the serialized grammar (``CompiledGrammar.serialize_json``), which the
parent deserializes against its own TokenizerInfo.
"""

from __future__ import annotations

import json
import resource
import sys
from multiprocessing.connection import Connection


class GrammarCompilerProcess:
    """Text in, serialized grammar out."""

    def __init__(self, token_bytes: list[bytes], vocab_size: int, eos_token_ids: tuple[int, ...], max_threads: int,
                 max_whitespace: int) -> None:
        import xgrammar as xgr

        info = xgr.TokenizerInfo(list(token_bytes), xgr.VocabType.RAW, vocab_size=vocab_size,
                                 stop_token_ids=list(eos_token_ids))
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads, cache_enabled=False)
        self.max_whitespace = max_whitespace
        self.xgr = xgr

    def compile(self, kind: str, text: str) -> str:
        if kind == "json_schema":
            if self.max_whitespace == 0:
                grammar = self.compiler.compile_json_schema(text, any_whitespace=False, separators=(",", ":"))
            else:
                grammar = self.compiler.compile_json_schema(text, any_whitespace=True, max_whitespace_cnt=self.max_whitespace)
        elif kind == "regex":
            grammar = self.compiler.compile_regex(text)
        elif kind == "structural_tag":
            grammar = self.compiler.compile_structural_tag(self.schema_contents_as_grammars(text))
        else:
            grammar = self.compiler.compile_grammar(text)
        return grammar.serialize_json()

    def schema_contents_as_grammars(self, text: str) -> str:
        """A structural tag whose tags' JSON-schema contents are grammars with this compiler's whitespace.

        xgrammar's ``json_schema`` content format takes no compact separators
        (its ``max_whitespace_cnt`` must be positive), so each schema is
        converted here, where the budget holds, as ``compile_json_schema`` would.
        """
        tag = json.loads(text)
        for item in tag["format"]["tags"]:
            if item["content"].get("type") == "json_schema":
                schema = json.dumps(item["content"]["json_schema"])
                if self.max_whitespace == 0:
                    grammar = self.xgr.Grammar.from_json_schema(schema, any_whitespace=False, separators=(",", ":"))
                else:
                    grammar = self.xgr.Grammar.from_json_schema(
                        schema, any_whitespace=True, max_whitespace_cnt=self.max_whitespace
                    )
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
