"""``constraint=xgrammar`` (the default): JSON schema, regex, EBNF, choices and structural tags through xgrammar.

xgrammar (Dong et al. 2024, "XGrammar: Flexible and Efficient Structured
Generation Engine for LLMs") compiles a grammar against the vocabulary once,
precomputing masks for context-independent tokens, and keeps a pushdown
matcher per request; SGLang and vLLM use it the same way. A choice list is
compiled as an EBNF alternation of string literals, ``json_object`` as the
schema ``{"type": "object"}``. JSON whitespace is bounded the same way as in
the ``fsm`` backend: compact ``,``/``:`` separators unless ``max_whitespace``
allows some.

A JSON schema is brought to its normal form and checked keyword by keyword
first (:mod:`moeframe.constrain.schema_normal`,
:mod:`moeframe.constrain.schema_support`): xgrammar 0.2.8 silently drops
``allOf``, ``not``, ``if``, ``uniqueItems``, ``contains``, keywords beside
``anyOf``, and length limits beside a ``pattern``, and reads ``oneOf`` as
``anyOf``, so those are merged away where exact and refused by name
otherwise. :func:`portable_schema` then closes its other gaps: every
``pattern`` is rewritten by our parser into the JSON-escaped spelling of the
strings it matches with ECMA-262 search semantics (xgrammar matches the raw
spelling and anchors both ends); strings with ``minLength``/``maxLength`` get
that spelling too (its own class lets raw control characters through and
forbids escapes); the ``date`` and ``ipv4`` formats become our patterns (its
own admit February 31st and leading zeros); and every place that takes any
JSON value (``{}``, an object's unlisted properties, an array's unlisted
items) refers to one recursive "any value" schema, because xgrammar's
built-in one separates array items with ", " even when compact separators
are asked for, and its strict mode forbids unlisted properties.

Every compilation runs first in a child process
(:mod:`moeframe.constrain.compile_worker`) under ``compile_timeout_s`` and
``compile_memory_mb``, since xgrammar cannot be interrupted and one real
schema took 209 s; only what compiled there within half the budget is then
compiled here (see :mod:`moeframe.constrain.xgrammar_process` for why twice),
so a compilation takes about ``compile_timeout_s`` at most.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch
import xgrammar as xgr

from moeframe.constrain import CONSTRAINTS, xgrammar_process
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.compile_worker import shared_worker
from moeframe.constrain.dfa import prune
from moeframe.constrain.errors import UnsatisfiableError, UnsupportedKeywordError
from moeframe.constrain.json_regex import FORMATS, STRING_CHAR, json_string_pattern, search_pattern
from moeframe.constrain.regex_syntax import parse_regex
from moeframe.constrain.schema_closed import close_objects
from moeframe.constrain.schema_normal import SCHEMA_LISTS, SCHEMA_MAPS, SCHEMA_VALUES, normalize_schema
from moeframe.constrain.schema_support import check_supported
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
    # budget of one compilation in the compiler process: wall clock (s) and memory growth (MB)
    compile_timeout_s: float = 10.0
    compile_memory_mb: int = 1024
    # objects with properties but no additionalProperties: also write unlisted ones (JSON Schema's meaning)
    open_objects: bool = False

    def __post_init__(self) -> None:
        if self.max_whitespace < 0:
            raise ValueError(f"max_whitespace must be >= 0, got {self.max_whitespace}")
        for name in ("max_threads", "cache_size", "compile_memory_mb"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.compile_timeout_s <= 0:
            raise ValueError(f"compile_timeout_s must be > 0, got {self.compile_timeout_s}")


ANY_VALUE = "moeframe_any_value"
ANY_REF = {"$ref": f"#/$defs/{ANY_VALUE}"}
ANY_VALUE_SCHEMA = {"anyOf": [{"type": "null"}, {"type": "boolean"}, {"type": "number"}, {"type": "string"},
                              {"type": "array", "items": ANY_REF}, {"type": "object", "additionalProperties": ANY_REF}]}


def portable_schema(schema: Any, open_objects: bool = False) -> Any:
    """A normal-form schema rewritten so that xgrammar enforces what it says (see the module docstring).

    ``open_objects``: an object with ``properties`` but no
    ``additionalProperties`` may also hold other properties (JSON Schema's
    meaning); otherwise only its listed ones are written, a narrower language
    (xgrammar's strict mode, and what the fsm backend writes).
    """
    out = _portable(schema, open_objects)
    if not isinstance(out, dict):
        return out
    if out == ANY_REF or ANY_VALUE in json.dumps(out):
        out = {**(out if out != ANY_REF else {"$ref": ANY_REF["$ref"]}), "$defs": {**out.get("$defs", {}), ANY_VALUE: ANY_VALUE_SCHEMA}}
    return out


def _portable(schema: Any, open_objects: bool) -> Any:
    if schema is True or schema == {}:
        return ANY_REF
    if not isinstance(schema, dict):
        return schema
    out = dict(schema)
    if isinstance(out.get("properties"), dict) and not open_objects:
        out["properties"] = {name: sub for name, sub in out["properties"].items() if sub is not False}
    for key in SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _portable(sub, open_objects) for name, sub in out[key].items()}
    for key in SCHEMA_LISTS:
        if isinstance(out.get(key), list):
            out[key] = [_portable(sub, open_objects) for sub in out[key]]
    for key in SCHEMA_VALUES:
        if key in out:
            out[key] = _portable(out[key], open_objects)
    kinds = out.get("type") if isinstance(out.get("type"), list) else [out.get("type")]
    if ("object" in kinds or (None in kinds and "properties" in out)) and (open_objects or not out.get("properties")):
        out.setdefault("additionalProperties", ANY_REF)
    if "array" in kinds:
        out.setdefault("items", ANY_REF)
    if "string" in kinds or {"pattern", "format", "minLength", "maxLength"} & set(out):
        _portable_string(out)
    return out


def _portable_string(out: dict[str, Any]) -> None:
    if "pattern" in out:
        try:
            out["pattern"] = f"^{json_string_pattern(search_pattern(out['pattern']), astral_braces=True, escapes=False)}$"
        except RequestError as err:
            raise UnsupportedKeywordError("pattern", "xgrammar", str(err)) from None
    elif out.get("format") in FORMATS:
        out["pattern"] = f"^{FORMATS[out.pop('format')]}$"
    elif "minLength" in out or "maxLength" in out:
        lo, hi = int(out.pop("minLength", 0)), out.pop("maxLength", None)
        out["pattern"] = f"^{STRING_CHAR}{{{lo},{'' if hi is None else int(hi)}}}$"


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


def tokenizer_info(token_bytes: list[bytes], vocab_size: int, eos_token_ids: tuple[int, ...]) -> xgr.TokenizerInfo:
    return xgr.TokenizerInfo(list(token_bytes), xgr.VocabType.RAW, vocab_size=vocab_size, stop_token_ids=list(eos_token_ids))


class XGrammarBackend(ConstraintBackend):
    def __init__(self, params: XGrammarParams, vocab: TokenVocab, eos_token_ids: tuple[int, ...]) -> None:
        super().__init__(vocab, eos_token_ids, params.jump_forward, params.cache_size)
        self.params = params
        self.info = tokenizer_info(list(vocab.token_bytes), vocab.vocab_size, eos_token_ids)
        self.compiler = xgr.GrammarCompiler(self.info, max_threads=params.max_threads, cache_enabled=False)
        init = (list(vocab.token_bytes), vocab.vocab_size, tuple(eos_token_ids), params.max_threads, params.max_whitespace)
        key = (hashlib.sha256(b"\0".join(vocab.token_bytes)).hexdigest(), *init[1:])
        # half the budget there, since what passes is compiled again here in about the same time
        self.worker = shared_worker(xgrammar_process.__file__, init, key, params.compile_timeout_s / 2, params.compile_memory_mb)

    def _compile(self, spec: ConstraintSpec) -> xgr.CompiledGrammar:
        kind, text = self.grammar_text(spec)
        try:
            self.worker.call("compile", kind, text)
        except RequestError as err:
            if type(err) is not RequestError:
                raise
            raise RequestError(f"xgrammar cannot compile this {spec.kind}: {err}") from None
        return xgrammar_process.compile_text(self.compiler, self.params.max_whitespace, kind, text)

    def grammar_text(self, spec: ConstraintSpec) -> tuple[str, str]:
        """What the compiler process compiles: (json_schema | regex | ebnf, its text)."""
        if spec.kind == "json_object":
            return "ebnf", json_object_grammar(self.params.max_whitespace)
        if spec.kind == "json_schema":
            schema = close_objects(normalize_schema(spec.schema()))
            check_supported(schema, "xgrammar")
            return "json_schema", json.dumps(portable_schema(schema, self.params.open_objects))
        if spec.kind == "regex":
            check_regex_nonempty(spec.regex or "")
            return "regex", spec.regex or ""
        if spec.kind == "choices":
            return "ebnf", choices_grammar(list(spec.choices or []))
        if spec.kind == "structural_tag":
            return "structural_tag", json.dumps(self._structural_tag(spec.structural_tag))
        return "ebnf", spec.grammar or ""

    def _schema_content(self, schema: dict[str, Any]) -> dict[str, Any]:
        """A tag's JSON-schema content, normalized and checked as a json_schema request is (the compiler process
        turns it into a grammar with the configured whitespace)."""
        normal = close_objects(normalize_schema(schema))
        check_supported(normal, "xgrammar")
        return {"type": "json_schema", "json_schema": portable_schema(normal, self.params.open_objects)}

    def _structural_tag(self, tag: StructuralTag) -> dict[str, Any]:
        """xgrammar's structural-tag format: ``triggered_tags`` over free text, else ``tags_with_separator``."""
        tags = [
            {
                "type": "tag",
                "begin": t.begin,
                "content": self._schema_content(t.schema),
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


def check_regex_nonempty(regex: str) -> None:
    """:class:`UnsatisfiableError` if ``regex`` provably matches nothing (read by our parser; its syntax errors are xgrammar's to report)."""
    try:
        tree = parse_regex(regex)
    except RequestError:
        return
    if prune(tree) is None:
        raise UnsatisfiableError(f"the regex {regex!r} matches no output at all (its language is empty)")


@CONSTRAINTS.register("xgrammar", params=XGrammarParams)
def build_xgrammar(params: XGrammarParams, tokenizer: object, vocab_size: int, eos_token_ids: tuple[int, ...]) -> XGrammarBackend:
    return XGrammarBackend(params, TokenVocab.from_tokenizer(tokenizer, vocab_size), tuple(eos_token_ids))
