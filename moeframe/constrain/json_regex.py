"""JSON Schema -> regex, for the ``fsm`` backend (the approach of Outlines' ``build_regex_from_schema``).

Supported subset: ``type`` (one or a list), ``properties`` written in their
given order with ``required`` ones mandatory and the rest optional, ``enum``,
``const``, ``anyOf``, local ``$ref`` into ``$defs``/``definitions``
(non-recursive), strings with ``minLength``/``maxLength``, ``pattern``
(matched against the whole string, as Outlines and xgrammar do) or
``format`` (date, time, date-time, email, uuid, ipv4), integers with any
bounds, numbers with integral bounds, arrays with ``items``,
``minItems``/``maxItems``. An object without ``properties`` or a schema
without ``type`` takes any JSON value nested at most ``max_depth`` deep (JSON
is not regular, so depth must be bounded). Any other constraining keyword
raises :class:`RequestError` naming it.

Output is compact by default: ``max_whitespace`` whitespace characters are
allowed around ``, : { } [ ]``, 0 meaning ``json.dumps(separators=(",", ":"))``
spelling, so a random-weight model cannot spin forever on blanks.
"""

from __future__ import annotations

import json
import re
from typing import Any

from moeframe.constrain.number_regex import UNBOUNDED_INTEGER, UNBOUNDED_NUMBER, integer_range, number_range
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

# Keywords that only annotate; everything else not handled below is refused.
ANNOTATIONS = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "$defs", "definitions",
               "additionalProperties", "readOnly", "writeOnly", "deprecated"}
HANDLED = {"type", "properties", "required", "enum", "const", "anyOf", "$ref", "minLength", "maxLength", "pattern",
           "format", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "items", "minItems", "maxItems"}


class _Converter:
    def __init__(self, root: dict[str, Any], max_whitespace: int, max_depth: int) -> None:
        self.root = root
        self.ws = f"[ \\n\\t]{{0,{max_whitespace}}}" if max_whitespace > 0 else ""
        self.max_depth = max_depth
        self.ref_stack: list[str] = []

    def token(self, char: str) -> str:
        """A structural character with the whitespace allowed around it."""
        return f"{self.ws}{re.escape(char)}{self.ws}"

    def value(self, schema: Any) -> str:
        if schema is True or schema == {}:
            return self.any_value(self.max_depth)
        if not isinstance(schema, dict):
            raise RequestError(f"unsupported JSON schema node {schema!r}")
        unknown = set(schema) - HANDLED - ANNOTATIONS
        if unknown:
            raise RequestError(f"fsm backend does not support JSON schema keyword(s) {sorted(unknown)}")
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
            if "properties" in schema:
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
            raise RequestError(f"fsm backend supports only local $ref into $defs/definitions, got {ref!r}")
        if ref in self.ref_stack:
            raise RequestError(f"fsm backend cannot express the recursive schema reference {ref!r}")
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
        properties = schema.get("properties")
        if not properties:
            if schema.get("additionalProperties") is False:
                return self.token("{") + self.token("}")
            return self.any_object(self.max_depth)
        required = set(schema.get("required", []))
        missing = required - set(properties)
        if missing:
            raise RequestError(f"JSON schema requires properties it does not define: {sorted(missing)}")
        members = [(self.literal(name) + self.token(":") + self.value(sub), name in required)
                   for name, sub in properties.items()]
        return self.token("{") + self.members(members) + self.token("}")

    def members(self, members: list[tuple[str, bool]]) -> str:
        """Members in order, optional ones skippable, commas only between those present."""
        comma = self.token(",")

        def after_first(i: int) -> str:
            return "".join(f"{comma}{m}" if req else f"(?:{comma}{m})?" for m, req in members[i:])

        def from_(i: int) -> str:
            if i == len(members):
                return ""
            member, req = members[i]
            if req:
                return member + after_first(i + 1)
            return f"(?:{member}{after_first(i + 1)}|{from_(i + 1)})"

        return from_(0)

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
        if "pattern" in schema and "format" in schema:
            raise RequestError("fsm backend cannot combine 'pattern' and 'format' on one string")
        if "pattern" in schema:
            return f'"{json_string_pattern(schema["pattern"])}"'
        if "format" in schema:
            if schema["format"] not in FORMATS:
                raise RequestError(f"fsm backend does not support string format {schema['format']!r}; supported: {sorted(FORMATS)}")
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
        if "exclusiveMinimum" in schema or "exclusiveMaximum" in schema:
            raise RequestError("fsm backend supports exclusive bounds only on integers")
        lo, hi = schema.get("minimum"), schema.get("maximum")
        if lo is None and hi is None:
            return UNBOUNDED_NUMBER
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


def json_string_pattern(pattern: str) -> str:
    """A pattern for a string's characters, rewritten to match their JSON-escaped spelling.

    ``"`` and ``\\`` become ``\\"`` and ``\\\\``; control characters are dropped
    from classes (JSON would need ``\\u`` escapes for them).
    """
    return to_regex(_escape_for_json(parse_regex(pattern)))


def _escape_for_json(node: Node) -> Node:
    if isinstance(node, Concat):
        return Concat(tuple(_escape_for_json(n) for n in node.items))
    if isinstance(node, Alt):
        return Alt(tuple(_escape_for_json(n) for n in node.options))
    if isinstance(node, Repeat):
        return Repeat(_escape_for_json(node.item), node.min, node.max)
    plain, escaped = [], []
    for lo, hi in node.ranges:
        for code in (0x22, 0x5C):
            if lo <= code <= hi:
                escaped.append(Concat((Chars(((0x5C, 0x5C),)), Chars(((code, code),)))))
        for piece in _minus(lo, hi, [(0, 0x1F), (0x22, 0x22), (0x5C, 0x5C)]):
            plain.append(piece)
    options = ([Chars(tuple(plain))] if plain else []) + escaped
    if not options:
        raise RequestError("a string pattern allows only control characters, which JSON cannot hold unescaped")
    return options[0] if len(options) == 1 else Alt(tuple(options))


def _minus(lo: int, hi: int, holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = [(lo, hi)]
    for h_lo, h_hi in holes:
        pieces = [p for a, b in pieces for p in ((a, min(b, h_lo - 1)), (max(a, h_hi + 1), b)) if p[0] <= p[1]]
    return pieces


def to_regex(node: Node) -> str:
    """A syntax tree back to pattern text (Python ``re`` compatible)."""
    if isinstance(node, Chars):
        return "[" + "".join(_class_item(lo, hi) for lo, hi in node.ranges) + "]"
    if isinstance(node, Concat):
        return "".join(f"(?:{to_regex(n)})" if isinstance(n, Alt) else to_regex(n) for n in node.items)
    if isinstance(node, Alt):
        return "|".join(to_regex(n) for n in node.options)
    hi = "" if node.max is None else str(node.max)
    return f"(?:{to_regex(node.item)}){{{node.min},{hi}}}"


def _class_item(lo: int, hi: int) -> str:
    return _class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}"


def _class_char(code: int) -> str:
    return f"\\U{code:08x}"


def schema_to_regex(schema: dict[str, Any] | bool, max_whitespace: int = 0, max_depth: int = 2) -> str:
    """The regex of ``schema``'s instances as compact JSON; :class:`RequestError` when outside the subset."""
    root = schema if isinstance(schema, dict) else {}
    return _Converter(root, max_whitespace, max_depth).value(schema)
