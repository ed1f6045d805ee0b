"""``constraint=xgrammar`` (the default): JSON schema, regex, EBNF, choices and structural tags through xgrammar.

xgrammar (Dong et al. 2024, "XGrammar: Flexible and Efficient Structured
Generation Engine for LLMs") compiles a grammar against the vocabulary once,
precomputing masks for context-independent tokens, and keeps a pushdown
matcher per request; SGLang and vLLM use it the same way. A choice list is
compiled as an EBNF alternation of string literals, ``json_object`` as the
schema ``{"type": "object"}``. JSON whitespace is bounded the same way as in
the ``fsm`` backend: compact ``,``/``:`` separators unless ``max_whitespace``
allows some.

Two xgrammar 0.2.8 gaps are closed by rewriting the schema before compiling
(:func:`portable_schema`): a string with ``minLength``/``maxLength`` compiles
to the class ``[^"\\\r\n]``, which lets raw control characters (invalid JSON)
through and forbids escapes; and its ``date`` and ``ipv4`` formats admit
February 31st and leading zeros. Both become a ``pattern`` from
:mod:`moeframe.constrain.json_regex`, so both backends mean the same thing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from moeframe.constrain import CONSTRAINTS
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.json_regex import FORMATS, STRING_CHAR
from moeframe.constrain.structural_tag import StructuralTag
from moeframe.constrain.vocab import TokenVocab
from moeframe.errors import RequestError


@dataclass(frozen=True)
class XGrammarParams:
    jump_forward: bool = True
    # whitespace characters allowed between JSON tokens; 0 = compact separators (",", ":")
    max_whitespace: int = 0
    max_threads: int = 8
    cache_size: int = 256

    def __post_init__(self) -> None:
        if self.max_whitespace < 0:
            raise ValueError(f"max_whitespace must be >= 0, got {self.max_whitespace}")
        for name in ("max_threads", "cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def portable_schema(schema: Any) -> Any:
    """``schema`` with length-bounded plain strings and our known formats spelled as patterns."""
    if isinstance(schema, list):
        return [portable_schema(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: portable_schema(value) for key, value in schema.items()}
    kinds = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    if "string" not in kinds or "pattern" in out:
        return out
    if out.get("format") in FORMATS:
        out["pattern"] = f"^{FORMATS[out.pop('format')]}$"
    elif "format" not in out and ("minLength" in out or "maxLength" in out):
        lo, hi = int(out.pop("minLength", 0)), out.pop("maxLength", None)
        out["pattern"] = f"^{STRING_CHAR}{{{lo},{'' if hi is None else int(hi)}}}$"
    return out


JSON_OBJECT_EBNF = r"""root ::= object
value ::= object | array | string | number | "true" | "false" | "null"
object ::= "{" ws (member (ws "," ws member)*)? ws "}"
member ::= string ws ":" ws value
array ::= "[" ws (value (ws "," ws value)*)? ws "]"
string ::= "\"" plain ("\\" (["\\/bfnrt] | "u" [0-9a-fA-F]{4}) plain)* "\""
plain ::= [^"\\\x00-\x1f\uD800-\uDFFF]*
number ::= "-"? ("0" | [1-9] [0-9]*) ("." [0-9]+)? ([eE] [+\-]? [0-9]+)?
"""


def json_object_grammar(max_whitespace: int) -> str:
    """EBNF of any JSON object with at most ``max_whitespace`` blanks around punctuation.

    Written out because xgrammar 0.2.8's built-in "any value" rule separates
    array items with ", " even when compact separators are asked for, its
    strict mode turns ``{"type": "object"}`` into ``{}`` only, and its negated
    classes let UTF-16 surrogates (invalid UTF-8) into strings.
    """
    ws = rf"[ \n\t]{{0,{max_whitespace}}}" if max_whitespace else '""'
    return JSON_OBJECT_EBNF + f"ws ::= {ws}\n"


def choices_grammar(choices: list[str]) -> str:
    """EBNF whose language is exactly ``choices`` (JSON string escapes are valid EBNF literals)."""
    return "root ::= " + " | ".join(json.dumps(choice, ensure_ascii=False) for choice in choices)


class XGrammarState(ConstraintState):
    def __init__(self, compiled: xgr.CompiledGrammar, vocab: TokenVocab, eos_token_ids: tuple[int, ...]) -> None:
        super().__init__(vocab, eos_token_ids)
        self.matcher = xgr.GrammarMatcher(compiled, override_stop_tokens=list(eos_token_ids))

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        self.matcher.fill_next_token_bitmask(bitmask, row)

    def advance(self, token_id: int) -> bool:
        return self.matcher.accept_token(token_id)

    def is_terminal(self) -> bool:
        return self.matcher.is_completed()

    def forced_bytes(self) -> bytes:
        try:
            return self.matcher.find_jump_forward_string().encode("utf-8")
        except UnicodeDecodeError:  # xgrammar 0.2.8 fails on a forced run ending mid-character
            return b""

    def rollback(self, num_tokens: int) -> None:
        self.matcher.rollback(num_tokens)


class XGrammarBackend(ConstraintBackend):
    def __init__(self, params: XGrammarParams, vocab: TokenVocab, eos_token_ids: tuple[int, ...]) -> None:
        super().__init__(vocab, eos_token_ids, params.jump_forward, params.cache_size)
        self.params = params
        info = xgr.TokenizerInfo(
            list(vocab.token_bytes), xgr.VocabType.RAW, vocab_size=vocab.vocab_size, stop_token_ids=list(eos_token_ids)
        )
        self.compiler = xgr.GrammarCompiler(info, max_threads=params.max_threads, cache_enabled=False)

    def _compile(self, spec: ConstraintSpec) -> xgr.CompiledGrammar:
        try:
            if spec.kind == "json_object":
                return self.compiler.compile_grammar(json_object_grammar(self.params.max_whitespace))
            if spec.kind == "json_schema":
                return self._compile_schema(json.dumps(portable_schema(spec.schema())))
            if spec.kind == "regex":
                return self.compiler.compile_regex(spec.regex)
            if spec.kind == "choices":
                return self.compiler.compile_grammar(choices_grammar(list(spec.choices or [])))
            if spec.kind == "structural_tag":
                return self.compiler.compile_structural_tag(json.dumps(self._structural_tag(spec.structural_tag)))
            return self.compiler.compile_grammar(spec.grammar)
        except RequestError:
            raise
        except Exception as err:  # xgrammar reports bad input as RuntimeError/ValueError subclasses
            raise RequestError(f"xgrammar cannot compile this {spec.kind}: {str(err).strip()}") from None

    def _compile_schema(self, schema: str) -> xgr.CompiledGrammar:
        if self.params.max_whitespace == 0:
            return self.compiler.compile_json_schema(schema, any_whitespace=False, separators=(",", ":"))
        return self.compiler.compile_json_schema(
            schema, any_whitespace=True, max_whitespace_cnt=self.params.max_whitespace
        )

    def _schema_grammar(self, schema: dict[str, Any]) -> str:
        """EBNF of ``schema`` with the whitespace of ``_compile_schema`` (a structural tag's JSON content
        takes no compact separators of its own, so its schema goes in as a grammar)."""
        text = json.dumps(portable_schema(schema))
        if self.params.max_whitespace == 0:
            return str(xgr.Grammar.from_json_schema(text, any_whitespace=False, separators=(",", ":")))
        grammar = xgr.Grammar.from_json_schema(text, any_whitespace=True, max_whitespace_cnt=self.params.max_whitespace)
        return str(grammar)

    def _structural_tag(self, tag: StructuralTag) -> dict[str, Any]:
        """xgrammar's structural-tag format: ``triggered_tags`` over free text, else ``tags_with_separator``."""
        tags = [
            {
                "type": "tag",
                "begin": t.begin,
                "content": {"type": "grammar", "grammar": self._schema_grammar(t.schema)},
                "end": t.end,
            }
            for t in tag.tags
        ]
        if tag.free_text:
            form = {
                "type": "triggered_tags",
                "triggers": [tag.trigger],
                "tags": tags,
                "stop_after_first": tag.stop_after_first,
            }
        else:
            form = {
                "type": "tags_with_separator",
                "tags": tags,
                "separator": tag.separator,
                "at_least_one": True,
                "stop_after_first": tag.stop_after_first,
            }
        return {"type": "structural_tag", "format": form}

    def new_state(self, compiled: xgr.CompiledGrammar) -> XGrammarState:
        return XGrammarState(compiled, self.vocab, self.eos_token_ids)


@CONSTRAINTS.register("xgrammar", params=XGrammarParams)
def build_xgrammar(params: XGrammarParams, tokenizer: object, vocab_size: int, eos_token_ids: tuple[int, ...]) -> XGrammarBackend:
    return XGrammarBackend(params, TokenVocab.from_tokenizer(tokenizer, vocab_size), tuple(eos_token_ids))
