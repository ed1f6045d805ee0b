"""JSON Schema -> regex, for the ``fsm`` backend (the approach of Outlines' ``build_regex_from_schema``).

Takes a schema's normal form (:mod:`moeframe.constrain.schema_normal`) that
:func:`moeframe.constrain.schema_support.check_supported` passed for ``fsm``:
``type`` (one or a list), ``properties`` written in their given order with
``required`` ones mandatory and the rest optional (other properties are not
written: a narrower language, never a wider one), ``additionalProperties``
of an object without ``properties``, ``enum``, ``const``, ``anyOf``, local
``$ref`` into ``$defs``/``definitions`` (non-recursive), strings with
``minLength``/``maxLength``, ``pattern`` (ECMA-262 search semantics: an
unanchored side may hold anything) or ``format`` (date, time, date-time,
email, uuid, ipv4; other formats are annotations), integers with any bounds,
numbers with integral bounds, arrays with ``items``, ``minItems``/``maxItems``.
An object without ``properties`` or a schema without ``type`` takes any JSON
value nested at most ``max_depth`` deep (JSON is not regular, so depth must
be bounded).

The regex grows with nesting (each optional property repeats the members
after it), so its size is checked as it is built, against
``max_regex_chars`` and a deadline: a schema over budget fails in
milliseconds with :class:`BudgetError` instead of building gigabytes.

Output is compact by default: ``max_whitespace`` whitespace characters are
allowed around ``, : { } [ ]``, 0 meaning ``json.dumps(separators=(",", ":"))``
spelling, so a random-weight model cannot spin forever on blanks.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from moeframe.constrain.number_regex import UNBOUNDED_INTEGER, UNBOUNDED_NUMBER, integer_range, number_range
from moeframe.constrain.errors import BudgetError, UnsupportedKeywordError
from moeframe.constrain.regex_syntax import Alt, Chars, Concat, Node, Repeat, parse_regex
from moeframe.errors import RequestError

STRING_CHAR = r'(?:[^"\\\x00-\x1f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})'
STRING = f'"{STRING_CHAR}*"'
LITERALS = {"boolean": "(?:true|false)", "null": "null"}

_DAY31 = r"(?:0[1-9]|[12][0-9]|3[01])"
_DAY30 = r"(?:0[1-9]|[12][0-9]|30)"
_YEAR = r"(?:[1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])"
_LEAP_YEAR = r"(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:[13579][26]|[2468][048]|0[48])00)"
DATE = (
    f"(?:{_YEAR}-(?:(?:0[13578]|1[02])-{_DAY31}|(?:0[469]|11)-{_DAY30}|02-(?:0[1-9]|1[0-9]|2[0-8]))"
    f"|{_LEAP_YEAR}-02-29)"
)
TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
FORMATS = {
    "date": DATE,
    "time": TIME,
    "date-time": f"{DATE}T{TIME}",
    "email": r"[a-zA-Z0-9_+-]+(?:\.[a-zA-Z0-9_+-]+)*@[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?)+",
    "uuid": r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
    "ipv4": rf"{_OCTET}(?:\.{_OCTET}){{3}}",
}



class _Converter:
    def __init__(self, root: dict[str, Any], max_whitespace: int, max_depth: int, max_chars: int, deadline: float) -> None:
        self.root = root
        self.ws = f"[ \\n\\t]{{0,{max_whitespace}}}" if max_whitespace > 0 else ""
        self.max_depth = max_depth
        self.max_chars = max_chars
        self.deadline = deadline
        self.ref_stack: list[str] = []

    def checked(self, regex: str) -> str:
        """``regex`` if within the budget; BudgetError otherwise."""
        if len(regex) > self.max_chars:
            raise BudgetError(f"constraint too large: its regex passes {self.max_chars} characters (fsm max_regex_chars)")
        if time.monotonic() > self.deadline:
            raise BudgetError("constraint too large: building its regex passed the compile time budget (compile_timeout_s)")
        return regex

    def token(self, char: str) -> str:
        """A structural character with the whitespace allowed around it."""
        return f"{self.ws}{re.escape(char)}{self.ws}"

    def value(self, schema: Any) -> str:
        return self.checked(self.node(schema))

    def node(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return self.any_value(self.max_depth)
        if schema is False:
            return "[^\\s\\S]"
        if not isinstance(schema, dict):
            raise RequestError(f"unsupported JSON schema node {schema!r}")
        if "$ref" in schema:
            return self.ref(schema["$ref"])
        if "const" in schema:
            return self.literal(schema["const"])
        if "enum" in schema:
            if not schema["enum"]:
                raise RequestError("JSON schema 'enum' must not be empty")
            return "(?:" + "|".join(self.literal(v) for v in schema["enum"]) + ")"
        if "anyOf" in schema:
            return "(?:" + "|".join(self.value(option) for option in schema["anyOf"]) + ")"
        kind = schema.get("type")
        if kind is None:
            if "properties" in schema or "additionalProperties" in schema:
                kind = "object"
            elif "items" in schema:
                kind = "array"
            else:
                return self.any_value(self.max_depth)
        if isinstance(kind, list):
            return "(?:" + "|".join(self.typed(k, schema) for k in kind) + ")"
        return self.typed(kind, schema)

    def typed(self, kind: str, schema: dict[str, Any]) -> str:
        if kind == "object":
            return self.object(schema)
        if kind == "array":
            return self.array(schema)
        if kind == "string":
            return self.string(schema)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind in LITERALS:
            return LITERALS[kind]
        raise RequestError(f"unknown JSON schema type {kind!r}")

    def ref(self, ref: str) -> str:
        prefix = next((p for p in ("#/$defs/", "#/definitions/") if ref.startswith(p)), None)
        if prefix is None:
            raise UnsupportedKeywordError("$ref", "fsm", f"only local references into $defs/definitions, got {ref!r}")
        if ref in self.ref_stack:
            raise UnsupportedKeywordError("$ref", "fsm", f"the reference {ref!r} is recursive, which a regex cannot express")
        target = self.root.get(prefix[2:-1], {}).get(ref[len(prefix):])
        if target is None:
            raise RequestError(f"JSON schema $ref {ref!r} points nowhere")
        self.ref_stack.append(ref)
        try:
            return self.value(target)
        finally:
            self.ref_stack.pop()

    def literal(self, value: Any) -> str:
        return re.escape(json.dumps(value, separators=(",", ":"), ensure_ascii=False))

    def object(self, schema: dict[str, Any]) -> str:
        properties = {k: v for k, v in schema.get("properties", {}).items() if v is not False}
        extra = schema.get("additionalProperties", {})
        if not properties:
            if extra is False:
                return self.token("{") + self.token("}")
            if extra in ({}, True):
                return self.any_object(self.max_depth)
            member = STRING + self.token(":") + self.value(extra)
            return self.checked(self.token("{") + f"(?:{member}(?:{self.token(',')}{member})*)?" + self.token("}"))
        required = set(schema.get("required", []))
        members = [(self.literal(name) + self.token(":") + self.value(sub), name in required)
                   for name, sub in properties.items()]
        return self.token("{") + self.members(members) + self.token("}")

    def members(self, members: list[tuple[str, bool]]) -> str:
        """Members in order, optional ones skippable, commas only between those present.

        Built from the last member back, so each step's size is checked
        before the next multiplies it.
        """
        comma = self.token(",")
        after = ""  # members i+1.. each behind its comma
        start = ""  # members i+1.., the first one present without a comma
        for member, req in reversed(members):
            start = self.checked(member + after if req else f"(?:{member}{after}|{start})")
            after = self.checked((f"{comma}{member}" if req else f"(?:{comma}{member})?") + after)
        return start

    def array(self, schema: dict[str, Any]) -> str:
        item = self.value(schema.get("items", {}))
        lo, hi = int(schema.get("minItems", 0)), schema.get("maxItems")
        if hi is not None and int(hi) < lo:
            raise RequestError(f"JSON schema minItems {lo} > maxItems {hi}")
        open_, close, comma = self.token("["), self.token("]"), self.token(",")
        if hi == 0:
            return open_ + close
        more_hi = "" if hi is None else str(int(hi) - 1)
        rest = f"(?:{comma}{item}){{{max(lo - 1, 0)},{more_hi}}}"
        body = f"{item}{rest}"
        return open_ + (body if lo > 0 else f"(?:{body})?") + close

    def string(self, schema: dict[str, Any]) -> str:
        known_format = schema.get("format") in FORMATS
        if "pattern" in schema and known_format:
            raise UnsupportedKeywordError("format", "fsm", "beside 'pattern'")
        if "pattern" in schema:
            return f'"{json_string_pattern(search_pattern(schema["pattern"]))}"'
        if known_format:
            return f'"{FORMATS[schema["format"]]}"'
        lo, hi = int(schema.get("minLength", 0)), schema.get("maxLength")
        if lo == 0 and hi is None:
            return STRING
        return f'"{STRING_CHAR}{{{lo},{"" if hi is None else int(hi)}}}"'

    def integer(self, schema: dict[str, Any]) -> str:
        lo, hi = _bounds(schema, step=1)
        if lo is None and hi is None:
            return UNBOUNDED_INTEGER
        return integer_range(_ceil(lo), _floor(hi))

    def number(self, schema: dict[str, Any]) -> str:
        for key in ("exclusiveMinimum", "exclusiveMaximum"):
            if key in schema:
                raise UnsupportedKeywordError(key, "fsm", "exclusive bounds are enforced only on integers")
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is None and hi is None:
            return UNBOUNDED_NUMBER
        for key, bound in (("minimum", lo), ("maximum", hi)):
            if bound is not None and bound != int(bound):
                raise UnsupportedKeywordError(key, "fsm", f"fractional number bound {bound}")
        return number_range(lo, hi)

    def any_value(self, depth: int) -> str:
        scalars = [STRING, UNBOUNDED_NUMBER, LITERALS["boolean"], LITERALS["null"]]
        if depth > 0:
            scalars += [self.any_object(depth), self.any_array(depth)]
        return "(?:" + "|".join(scalars) + ")"

    def any_object(self, depth: int) -> str:
        member = STRING + self.token(":") + self.any_value(depth - 1)
        return self.token("{") + f"(?:{member}(?:{self.token(',')}{member})*)?" + self.token("}")

    def any_array(self, depth: int) -> str:
        item = self.any_value(depth - 1)
        return self.token("[") + f"(?:{item}(?:{self.token(',')}{item})*)?" + self.token("]")


def _bounds(schema: dict[str, Any], step: int) -> tuple[float | None, float | None]:
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if "exclusiveMinimum" in schema:
        ex = schema["exclusiveMinimum"]
        lo = ex + step if lo is None else max(lo, ex + step)
    if "exclusiveMaximum" in schema:
        ex = schema["exclusiveMaximum"]
        hi = ex - step if hi is None else min(hi, ex - step)
    return lo, hi


def _ceil(x: float | None) -> int | None:
    return None if x is None else -int(-x // 1)


def _floor(x: float | None) -> int | None:
    return None if x is None else int(x // 1)


ANYTHING = r"[\s\S]*"


def search_pattern(pattern: str) -> str:
    """A full-match regex for JSON Schema's ``pattern`` (ECMA-262 search: unanchored ends match anything).

    Each top-level alternative keeps a leading ``^`` / trailing ``$`` as an
    anchor and otherwise gets ``[\\s\\S]*`` on that side, so a string
    matches the result exactly when the pattern finds a match in it.
    """
    options, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            options.append(pattern[start:i])
            start = i + 1
        i += 1
    options.append(pattern[start:])
    out = []
    for option in options:
        head = option[1:] if option.startswith("^") else None
        body = option[1:] if head is not None else option
        tail = body.endswith("$") and not _escaped(body, len(body) - 1)
        body = body[:-1] if tail else body
        out.append(("" if head is not None else ANYTHING) + f"(?:{body})" + ("" if tail else ANYTHING))
    return out[0] if len(out) == 1 else "|".join(f"(?:{o})" for o in out)


def _escaped(text: str, at: int) -> bool:
    """Whether ``text[at]`` is escaped by an odd run of backslashes before it."""
    run = 0
    while at - run - 1 >= 0 and text[at - run - 1] == "\\":
        run += 1
    return run % 2 == 1


def json_string_pattern(pattern: str, astral_braces: bool = False, escapes: bool = True) -> str:
    """A pattern for a string's characters, rewritten to match their JSON-escaped spelling.

    ``"`` and ``\\`` become ``\\"`` and ``\\\\``; control characters are dropped
    from classes (JSON would need ``\\u`` escapes for them). ``astral_braces``:
    spell code points past U+FFFF ``\\u{...}`` (ECMA-262, xgrammar) instead of
    ``\\U........`` (Python). The result is one group, so text around it
    cannot split a top-level alternation. ``escapes=False`` leaves ``"`` and ``\\`` out
    altogether (a narrower language), for xgrammar 0.2.8, which rejects
    escaped spellings inside a repeated alternation.
    """
    return f"(?:{to_regex(_escape_for_json(parse_regex(pattern), escapes), astral_braces)})"


def _escape_for_json(node: Node, escapes: bool) -> Node:
    if isinstance(node, Concat):
        return Concat(tuple(_escape_for_json(n, escapes) for n in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(_escape_for_json(n, escapes) for n in node.options))
    if isinstance(node, Repeat):
        return Repeat(_escape_for_json(node.item, escapes), node.min, node.max)
    plain, escaped = [], []
    for lo, hi in node.ranges:
        for code in (0x22, 0x5C) if escapes else ():
            if lo <= code <= hi:
                escaped.append(Concat((Chars(((0x5C, 0x5C),)), Chars(((code, code),)))))
        for piece in _minus(lo, hi, [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]):
            plain.append(piece)
    options = ([Chars(tuple(plain))] if plain else []) + escaped
    if not options:
        raise RequestError("a string pattern allows here only characters that JSON cannot hold unescaped")
    return options[0] if len(options) == 1 else Alt(tuple(options))


def _minus(lo: int, hi: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [(lo, hi)]
    for h_lo, h_hi in holes:
        pieces = [p for a, b in pieces for p in ((a, min(b, h_lo - 1)), (max(a, h_hi + 1), b)) if p[0] <= p[1]]
    return pieces


def to_regex(node: Node, astral_braces: bool = False) -> str:
    """A syntax tree back to pattern text (Python ``re`` compatible unless ``astral_braces``)."""
    if isinstance(node, Chars):
        return "[" + "".join(_class_item(lo, hi, astral_braces) for lo, hi in node.ranges) + "]"
    if isinstance(node, Concat):
        return "".join(f"(?:{to_regex(n, astral_braces)})" if isinstance(n, Alt) else to_regex(n, astral_braces) for n in node.items)
    if isinstance(node, Alt):
        return "|".join(to_regex(n, astral_braces) for n in node.options)
    hi = "" if node.max is None else str(node.max)
    return f"(?:{to_regex(node.item, astral_braces)}){{{node.min},{hi}}}"


def _class_item(lo: int, hi: int, astral_braces: bool) -> str:
    first = _class_char(lo, astral_braces)
    return first if lo == hi else f"{first}-{_class_char(hi, astral_braces)}"


def _class_char(code: int, astral_braces: bool) -> str:
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\u{{{code:x}}}" if astral_braces else f"\\U{code:08x}"


def schema_to_regex(
    schema: dict[str, Any] | bool,
    max_whitespace: int = 0,
    max_depth: int = 2,
    max_chars: int = 500_000,
    timeout_s: float = 10.0,
) -> str:
    """The regex of ``schema``'s instances as compact JSON (a normal form the fsm backend supports).

    :class:`BudgetError` as soon as the regex passes ``max_chars`` or building
    it passes ``timeout_s``.
    """
    root = schema if isinstance(schema, dict) else {}
    return _Converter(root, max_whitespace, max_depth, max_chars, time.monotonic() + timeout_s).value(schema)
