"""JSON Schema -> an equivalent normal form that both backends can enforce more of.

Real-world schemas (JSONSchemaBench, Geng et al. 2025) mix drafts and lean
on combinators that grammar engines drop; llguidance likewise rewrites a
schema before building its grammar. Every rewrite here keeps the set of
valid instances exactly, or narrows it only where noted, never widens it:

- Annotations and unknown keywords (``title``, ``id``, ``example``, ``x-*``,
  ``readonly``...) are dropped: JSON Schema says they do not constrain.
  Unknown ``format`` values are annotations too (2020-12, section 7.2.1).
- Draft-04 forms become 2020-12 ones: boolean ``exclusiveMinimum``, tuple
  ``items`` + ``additionalItems``, ``dependencies``; and before 2019-09 a
  ``$ref`` ignores its siblings, as those drafts say.
- ``allOf`` is merged into its parent where the parts combine (types
  intersect, bounds tighten, properties and ``required`` unite, enums
  intersect, and properties one part's ``additionalProperties`` forbids
  become forbidden); what cannot be merged stays and is refused later.
- Keywords beside ``anyOf``/``oneOf`` are merged into each branch; ``oneOf``
  becomes ``anyOf`` when its branches are provably disjoint (types, or a
  required property whose allowed constants differ).
- ``required`` names missing from ``properties`` get an entry (the
  ``additionalProperties`` schema, or any value), so a backend that only
  generates listed properties still writes them.
- ``enum``/``const`` beside other keywords become the values that pass
  those keywords (checked with ``jsonschema``; exact, since the set is finite).
- ``not {}`` matches nothing and ``not {"type": T}`` narrows ``type``; an
  integral ``multipleOf`` makes a number an integer; ``minLength`` /
  ``maxLength`` beside a ``pattern`` are dropped where the pattern implies
  them or folded into it where it repeats one character class.

Rewrites that are exact only over closed objects live in
:mod:`moeframe.constrain.schema_closed`.

Schemas that no instance satisfies raise :class:`UnsatisfiableError`.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import jsonschema

from moeframe.constrain.errors import UnsatisfiableError
from moeframe.constrain.json_regex import search_pattern, to_regex
from moeframe.constrain.regex_syntax import Chars, Concat, Alt, Node, Repeat, parse_regex
from moeframe.errors import RequestError

# Keywords that constrain an instance (JSON Schema 2020-12 core + validation, and older drafts' spellings).
ASSERTIONS = {
    "type", "enum", "const", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
    "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems", "maxContains", "minContains",
    "maxProperties", "minProperties", "required", "dependentRequired", "dependencies", "format",
    "properties", "patternProperties", "additionalProperties", "propertyNames", "items", "prefixItems",
    "additionalItems", "contains", "unevaluatedItems", "unevaluatedProperties", "allOf", "anyOf", "oneOf",
    "not", "if", "then", "else", "dependentSchemas", "$ref", "$dynamicRef", "$recursiveRef",
}
DEFINITIONS = ("$defs", "definitions")
SCHEMA_MAPS = ("properties", "patternProperties", "dependentSchemas") + DEFINITIONS
SCHEMA_LISTS = ("allOf", "anyOf", "oneOf", "prefixItems")
SCHEMA_VALUES = ("additionalProperties", "propertyNames", "items", "contains", "not", "if", "then", "else",
                 "unevaluatedItems", "unevaluatedProperties")
KNOWN_FORMATS = {"date", "time", "date-time", "duration", "email", "idn-email", "hostname", "idn-hostname", "ipv4",
                 "ipv6", "uri", "uri-reference", "iri", "iri-reference", "uuid", "uri-template", "json-pointer",
                 "relative-json-pointer", "regex"}
OLD_DRAFTS = ("draft-03", "draft-04", "draft-06", "draft-07")
LOWER = ("minimum", "exclusiveMinimum", "minLength", "minItems", "minProperties", "minContains")
UPPER = ("maximum", "exclusiveMaximum", "maxLength", "maxItems", "maxProperties", "maxContains")
TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def normalize_schema(schema: Any) -> Any:
    """The normal form of ``schema`` (a dict or a boolean); :class:`UnsatisfiableError` if nothing matches it."""
    if schema is False:
        raise UnsatisfiableError("the JSON schema is `false`: no output satisfies it")
    if not isinstance(schema, dict):
        return {}
    draft = str(schema.get("$schema", ""))
    normal = _Normalizer(schema, any(d in draft for d in OLD_DRAFTS)).root()
    if is_empty(normal):
        raise UnsatisfiableError("the JSON schema is unsatisfiable: no output satisfies it")
    return normal


class _Normalizer:
    def __init__(self, root: dict[str, Any], old_draft: bool) -> None:
        self.source = root
        self.old_draft = old_draft
        self.defs: dict[str, dict[str, Any]] = {}
        self.making: set[tuple[str, str]] = set()
        self.inlining: list[str] = []

    def root(self) -> Any:
        for key in DEFINITIONS:
            for name in self.source.get(key, {}) if isinstance(self.source.get(key), dict) else ():
                self.definition(key, name)
        out = self.node({k: v for k, v in self.source.items() if k not in DEFINITIONS})
        if isinstance(out, dict):
            out.update({key: dict(self.defs[key]) for key in DEFINITIONS if key in self.defs})
        return out

    def definition(self, key: str, name: str) -> Any:
        """The normal form of ``source[key][name]``, made on first use; None while it is being made (recursion)."""
        done = self.defs.setdefault(key, {})
        if name not in done and (key, name) not in self.making:
            self.making.add((key, name))
            done[name] = self.node(self.source[key][name])
            self.making.discard((key, name))
        return done.get(name)

    def node(self, schema: Any) -> Any:
        if schema is True:
            return {}
        if not isinstance(schema, dict):
            return schema
        if "$ref" in schema and self.old_draft:
            schema = {"$ref": schema["$ref"]}
        out = {k: v for k, v in schema.items() if k in ASSERTIONS}
        if out.get("format") not in KNOWN_FORMATS:
            out.pop("format", None)
        _draft4(out, self.old_draft)
        _drop_no_ops(out)
        if "not" in out and _negate(out) is False:
            return False
        _fold_lengths(out)
        _integral_multiple(out)
        _integer_bounds(out)
        for key in SCHEMA_MAPS:
            if isinstance(out.get(key), dict):
                out[key] = {name: self.node(sub) for name, sub in out[key].items()}
        for key in SCHEMA_LISTS:
            if isinstance(out.get(key), list):
                out[key] = [self.node(sub) for sub in out[key]]
        for key in SCHEMA_VALUES:
            if key in out:
                out[key] = self.node(out[key])
        if isinstance(out.get("type"), list):
            kinds = sorted(set(out["type"]))
            out["type"] = kinds[0] if len(kinds) == 1 else kinds
        if "$ref" in out and len(out) > 1:
            ref = out.pop("$ref")
            out.setdefault("allOf", []).insert(0, {"$ref": ref})
        out = self.merge_all_of(out)
        return False if out is False else self.finish(out)

    def finish(self, out: dict[str, Any]) -> Any:
        out = self.distribute(out)
        if out is False or "anyOf" in out and len(out) == 1:
            return out
        add_required_entries(out)
        _explicit_types(out)
        return _filter_constants(out)

    def inline(self, schema: Any) -> Any:
        """``schema`` with a top-level local ``$ref`` replaced by its (normalized) target, when not recursive."""
        if not isinstance(schema, dict) or set(schema) != {"$ref"}:
            return schema
        ref = schema["$ref"]
        target = self.target(ref)
        if target is None or ref in self.inlining:
            return schema
        self.inlining.append(ref)
        try:
            return self.inline(copy.deepcopy(target))
        finally:
            self.inlining.pop()

    def target(self, ref: str) -> Any:
        for key in DEFINITIONS:
            prefix = f"#/{key}/"
            if isinstance(ref, str) and ref.startswith(prefix) and "/" not in ref[len(prefix):]:
                name = ref[len(prefix):].replace("~1", "/").replace("~0", "~")
                if isinstance(self.source.get(key), dict) and name in self.source[key]:
                    return self.definition(key, name)
        return None

    def merge_all_of(self, out: dict[str, Any]) -> Any:
        if not isinstance(out.get("allOf"), list):
            return out
        parts = out.pop("allOf")
        kept = []
        for part in parts:
            merged = merge(out, self.inline(part))
            if merged is None:
                kept.append(part)
            elif merged is False:
                return False
            else:
                out = merged
        if kept:
            out["allOf"] = kept
        return out

    def distribute(self, out: dict[str, Any]) -> Any:
        """Fold the keywords beside ``anyOf``/``oneOf`` into each branch; ``oneOf`` of disjoint branches -> ``anyOf``."""
        which = [k for k in ("anyOf", "oneOf") if isinstance(out.get(k), list)]
        if len(which) != 1 or "allOf" in out:
            return out
        key = which[0]
        rest = {k: v for k, v in out.items() if k != key and k not in DEFINITIONS}
        branches = []
        for branch in out[key]:
            merged = merge(rest, self.inline(branch)) if rest else branch
            if merged is None:
                return out
            if rest and merged is not False:
                merged = self.finish(merged)
            if merged is not False and not is_empty(merged):
                branches.append(merged)
        if not branches:
            return False
        if key == "oneOf" and not pairwise_disjoint([self.inline(branch) for branch in branches]):
            return {"oneOf": branches, **{k: out[k] for k in DEFINITIONS if k in out}}
        return branches[0] if len(branches) == 1 else {"anyOf": branches}


def _draft4(out: dict[str, Any], old_draft: bool) -> None:
    """Draft-04 to -07 spellings in their 2020-12 form; ``dependencies`` only where the schema declares
    such a draft (2019-09 on, it is an unknown word, and so ignored)."""
    for bound, flag in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if isinstance(out.get(flag), bool):
            if out.pop(flag) and bound in out:
                out[flag] = out.pop(bound)
    if isinstance(out.get("items"), list):
        out["prefixItems"] = out.pop("items")
        if "additionalItems" in out:
            out["items"] = out.pop("additionalItems")
    out.pop("additionalItems", None)
    if isinstance(out.get("dependencies"), dict) and old_draft:
        for name, dep in out["dependencies"].items():
            key = "dependentRequired" if isinstance(dep, list) else "dependentSchemas"
            out.setdefault(key, {})[name] = dep
    out.pop("dependencies", None)


def _negate(out: dict[str, Any]) -> Any:
    """Rewrite ``not`` where its complement is a plain keyword: ``not {}`` matches nothing (False);
    ``not {"type": T}`` narrows ``type`` to the other types (``integer`` alone stays: "a number
    that is not an integer" has no keyword)."""
    negated = out["not"]
    if negated in ({}, True):
        return False
    if isinstance(negated, dict) and set(negated) == {"type"}:
        excluded = set(negated["type"]) if isinstance(negated["type"], list) else {negated["type"]}
        if "integer" in excluded and "number" not in excluded:
            return out
        if "number" in excluded:
            excluded.add("integer")
        kinds = sorted((_types(out) & set(TYPES)) - excluded)
        if not kinds:
            return False
        del out["not"]
        out["type"] = kinds[0] if len(kinds) == 1 else kinds
    return out


def _integer_bounds(out: dict[str, Any]) -> None:
    """Bounds of an integer as inclusive whole numbers (``minimum: 1.5`` is ``2``; ``exclusiveMaximum: 3`` is ``2``)."""
    if out.get("type") != "integer":
        return
    for key, whole in (("minimum", math.ceil), ("maximum", math.floor)):
        if isinstance(out.get(key), float) and math.isfinite(out[key]):
            out[key] = whole(out[key])
    for key, bound, whole, step in (("exclusiveMinimum", "minimum", math.floor, 1), ("exclusiveMaximum", "maximum", math.ceil, -1)):
        value = out.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            inclusive = whole(value) + step
            del out[key]
            out[bound] = inclusive if bound not in out else (max if step > 0 else min)(out[bound], inclusive)


def _integral_multiple(out: dict[str, Any]) -> None:
    """An integral ``multipleOf`` admits integers only: type number becomes integer, and a multiple of 1 is no constraint."""
    step = out.get("multipleOf")
    if isinstance(step, bool) or not isinstance(step, (int, float)) or step != int(step) or "type" not in out:
        return
    kinds = _types(out)
    if "number" in kinds:
        kinds = (kinds - {"number"}) | {"integer"}
        out["type"] = sorted(kinds)[0] if len(kinds) == 1 else sorted(kinds)
    out["multipleOf"] = int(step)
    if out["multipleOf"] == 1 and kinds <= {"integer"}:
        del out["multipleOf"]


def iter_nodes(schema: Any) -> Any:
    """Every schema object inside ``schema`` (definitions included), parents before children."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        yield node
        for key in SCHEMA_MAPS:
            if isinstance(node.get(key), dict):
                stack.extend(node[key].values())
        for key in SCHEMA_LISTS:
            if isinstance(node.get(key), list):
                stack.extend(node[key])
        for key in SCHEMA_VALUES:
            if key in node:
                stack.append(node[key])


def _fold_lengths(out: dict[str, Any]) -> None:
    """``minLength``/``maxLength`` beside a ``pattern``: dropped where the pattern already implies them,
    or folded into it where it is one character class repeated; else left (and refused later)."""
    if "pattern" not in out or not ("minLength" in out or "maxLength" in out):
        return
    pattern = out["pattern"]
    try:
        if "maxLength" in out and "|" not in pattern:
            core = pattern.removeprefix("^").removesuffix("$") if not pattern.endswith("\\$") else pattern.removeprefix("^")
            if out["maxLength"] <= length_range(parse_regex(core))[0]:
                out["pattern"] = pattern = f"^(?:{core})$"  # no room left for text around a match
        tree = parse_regex(search_pattern(pattern))
    except (RequestError, TypeError):
        return
    lo, hi = length_range(tree)
    if out.get("minLength", 0) <= lo:
        out.pop("minLength", None)
    if "maxLength" in out and hi is not None and hi <= out["maxLength"]:
        del out["maxLength"]
    if ("minLength" in out or "maxLength" in out) and isinstance(tree, Repeat) and isinstance(tree.item, Chars):
        low = max(tree.min, out.pop("minLength", 0))
        bounds = [b for b in (tree.max, out.pop("maxLength", None)) if b is not None]
        high = min(bounds) if bounds else None
        out["pattern"] = f"^{to_regex(Repeat(tree.item, low, high))}$"


def length_range(node: Node) -> tuple[int, int | None]:
    """Fewest and most characters a string matching ``node`` has (None: unbounded)."""
    if isinstance(node, Chars):
        return 1, 1
    if isinstance(node, Concat):
        ranges = [length_range(item) for item in node.items]
        his = [hi for _, hi in ranges]
        return sum(lo for lo, _ in ranges), None if None in his else sum(his)
    if isinstance(node, Alt):
        ranges = [length_range(option) for option in node.options]
        his = [hi for _, hi in ranges]
        return min(lo for lo, _ in ranges), None if None in his else max(his)
    lo, hi = length_range(node.item)
    if node.max is None:
        return lo * node.min, None if hi != 0 else 0
    return lo * node.min, None if hi is None else hi * node.max


# keywords that constrain only values of some types: untyped, they leave every other type free
TYPED_KEYWORDS = {"pattern", "format", "minLength", "maxLength", "minimum", "maximum", "exclusiveMinimum",
                  "exclusiveMaximum", "multipleOf", "items", "prefixItems", "minItems", "maxItems"}


def _explicit_types(out: dict[str, Any]) -> None:
    """Give an untyped schema with string, number or array keywords every type explicitly.

    JSON Schema applies ``pattern`` to strings only and lets a number
    through; grammar backends read an untyped ``{"pattern": ...}`` as any
    value and drop the pattern (xgrammar 0.2.8), so the type list makes each
    keyword apply to its own type. Untyped objects keep being read as objects
    (a narrower language).
    """
    if "type" not in out and TYPED_KEYWORDS & set(out) and "enum" not in out and "const" not in out:
        out["type"] = [kind for kind in TYPES if kind != "integer"]


def _drop_no_ops(out: dict[str, Any]) -> None:
    """Keywords that assert nothing as written: ``then``/``else`` without ``if``, ``uniqueItems: false``..."""
    if "if" not in out:
        out.pop("then", None)
        out.pop("else", None)
    if out.get("uniqueItems") is False:
        del out["uniqueItems"]
    for key in ("minItems", "minLength", "minProperties"):
        if out.get(key) == 0:
            del out[key]
    if isinstance(out.get("dependentRequired"), dict) and not any(out["dependentRequired"].values()):
        del out["dependentRequired"]
    if out.get("required") == []:
        del out["required"]


def add_required_entries(out: dict[str, Any]) -> None:
    required = out.get("required")
    if not isinstance(required, list) or "patternProperties" in out:
        return
    properties = out.get("properties", {})
    missing = [name for name in required if name not in properties]
    if not missing:
        return
    extra = out.get("additionalProperties", {})
    out["properties"] = {**properties, **{name: copy.deepcopy(extra) for name in missing}}


def _filter_constants(out: dict[str, Any]) -> Any:
    if "const" in out:
        values = [out.pop("const")] if "enum" not in out or out["const"] in out["enum"] else []
        out.pop("enum", None)
    elif isinstance(out.get("enum"), list):
        values = out.pop("enum")
    else:
        return out
    rest = {k: v for k, v in out.items() if k not in DEFINITIONS}
    if rest and "$ref" not in json.dumps(rest):
        validator = jsonschema.Draft202012Validator(rest)
        values = [v for v in values if validator.is_valid(v)]
        out = {k: v for k, v in out.items() if k in DEFINITIONS}
    unique = []
    for value in values:
        if not any(_same(value, u) for u in unique):
            unique.append(value)
    if not unique:
        return False
    out["enum"] = unique
    return out


def _same(a: Any, b: Any) -> bool:
    """JSON equality (1 == 1.0, but True != 1)."""
    return type(a) is type(b) and a == b if isinstance(a, bool) or isinstance(b, bool) else a == b


def _types(schema: dict[str, Any]) -> set[str]:
    kind = schema.get("type")
    if kind is None:
        return set(TYPES)
    return set(kind) if isinstance(kind, list) else {kind}


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer()):
        return "integer"
    return {float: "number", str: "string", list: "array", dict: "object"}[type(value)]


def possible_types(schema: Any) -> set[str]:
    if not isinstance(schema, dict) or "$ref" in schema or "anyOf" in schema or "oneOf" in schema:
        return set(TYPES)
    if "enum" in schema:
        return {_type_of(v) for v in schema["enum"]}
    kinds = _types(schema)
    return kinds | {"integer"} if "number" in kinds else kinds


def _constants(schema: Any) -> list[Any] | None:
    return schema["enum"] if isinstance(schema, dict) and isinstance(schema.get("enum"), list) else None


def disjoint(a: Any, b: Any) -> bool:
    """Whether no instance can match both ``a`` and ``b`` (a sufficient test, not a complete one)."""
    if not possible_types(a) & possible_types(b):
        return True
    ca, cb = _constants(a), _constants(b)
    if ca is not None and cb is not None and not any(_same(x, y) for x in ca for y in cb):
        return True
    for values, other in ((ca, b), (cb, a)):
        if values is not None and isinstance(other, dict) and "$ref" not in json.dumps(other):
            if not any(jsonschema.Draft202012Validator(other).is_valid(v) for v in values):
                return True
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return False
    for x, y in ((a, b), (b, a)):
        closed = y.get("additionalProperties") is False and "patternProperties" not in y
        if closed and possible_types(x) <= {"object"} and set(x.get("required", [])) - set(y.get("properties", {})):
            return True
    both_required = set(a.get("required", [])) & set(b.get("required", []))
    for name in both_required:
        pa, pb = a.get("properties", {}).get(name), b.get("properties", {}).get(name)
        if pa is not None and pb is not None and disjoint(pa, pb):
            return True
    return False


def pairwise_disjoint(branches: list[Any]) -> bool:
    return all(disjoint(a, b) for i, a in enumerate(branches) for b in branches[i + 1 :])


def merge(a: Any, b: Any) -> Any:
    """A schema matching exactly what matches both; False if nothing can, None if the parts do not combine."""
    if a is False or b is False:
        return False
    if a in ({}, True):
        return b
    if b in ({}, True):
        return a
    if not isinstance(a, dict) or not isinstance(b, dict):
        return None
    if "$ref" in a or "$ref" in b:
        return None
    out = dict(a)
    for key, value in b.items():
        if key not in out:
            out[key] = value
            continue
        mine = out[key]
        if key == "type":
            kinds = _intersect_types(_types(a), _types(b))
            if not kinds:
                return False
            out["type"] = kinds[0] if len(kinds) == 1 else kinds
        elif key in LOWER:
            out[key] = max(mine, value)
        elif key in UPPER:
            out[key] = min(mine, value)
        elif key == "required":
            out[key] = list(dict.fromkeys(list(mine) + list(value)))
        elif key == "enum":
            out[key] = [v for v in mine if any(_same(v, w) for w in value)]
            if not out[key]:
                return False
        elif key == "const":
            if not _same(mine, value):
                return False
        elif key == "uniqueItems":
            out[key] = bool(mine) or bool(value)
        elif key in ("items", "additionalProperties", "propertyNames"):
            merged = merge(mine, value)
            if merged is None:
                return None
            out[key] = merged
        elif key == "properties":
            continue
        elif key in DEFINITIONS:
            out[key] = {**mine, **value}
        elif mine != value:
            return None
    if "properties" in a or "properties" in b:
        properties = _merge_properties(a, b)
        if properties is None:
            return None
        if properties is False:
            return False
        out["properties"] = properties
    return out


def _intersect_types(a: set[str], b: set[str]) -> list[str]:
    both = a & b
    if "integer" in a and "number" in b or "number" in a and "integer" in b:
        both.add("integer")
    if "number" in both:
        both.discard("integer")
    return sorted(both)


def _merge_properties(a: dict[str, Any], b: dict[str, Any]) -> Any:
    if "patternProperties" in a or "patternProperties" in b:
        return None
    pa, pb = a.get("properties", {}), b.get("properties", {})
    out = {}
    for name in list(pa) + [n for n in pb if n not in pa]:
        left = pa[name] if name in pa else a.get("additionalProperties", {})
        right = pb[name] if name in pb else b.get("additionalProperties", {})
        merged = merge(left, right)
        if merged is None:
            return None
        if merged is False and name in set(a.get("required", [])) | set(b.get("required", [])):
            return False
        out[name] = merged
    return out


# (lower bound, upper bound, the types they apply to): a crossed pair leaves no value of those types
BOUND_PAIRS = [(lo, hi, ("integer", "number")) for lo in ("minimum", "exclusiveMinimum") for hi in ("maximum", "exclusiveMaximum")]
BOUND_PAIRS += [("minLength", "maxLength", ("string",)), ("minItems", "maxItems", ("array",)),
                ("minProperties", "maxProperties", ("object",))]


def is_empty(schema: Any) -> bool:
    """Whether ``schema`` provably matches nothing (a sufficient test, without following ``$ref``)."""
    if schema is False:
        return True
    if not isinstance(schema, dict):
        return False
    if schema.get("enum") == [] or ("not" in schema and schema["not"] in ({}, True)):
        return True
    if "anyOf" in schema and all(is_empty(s) for s in schema["anyOf"]):
        return True
    if "oneOf" in schema and all(is_empty(s) for s in schema["oneOf"]):
        return True
    if "allOf" in schema and any(is_empty(s) for s in schema["allOf"]):
        return True
    alive = _types(schema)
    for lo, hi, kinds in BOUND_PAIRS:
        if lo in schema and hi in schema:
            strict = lo.startswith("exclusive") or hi.startswith("exclusive")
            if schema[lo] > schema[hi] or (strict and schema[lo] >= schema[hi]):
                alive -= set(kinds)
    if "object" in alive:
        properties = schema.get("properties", {})
        extra = schema.get("additionalProperties", {}) if "patternProperties" not in schema else {}
        if any(is_empty(properties.get(name, extra)) for name in schema.get("required", [])):
            alive.discard("object")
        closed = schema.get("additionalProperties") is False and "patternProperties" not in schema
        if closed and schema.get("minProperties", 0) > len(properties):
            alive.discard("object")
    if "array" in alive and schema.get("minItems", 0) > 0:
        prefix, count = schema.get("prefixItems", []), schema["minItems"]
        if any(is_empty(s) for s in prefix[:count]) or (count > len(prefix) and is_empty(schema.get("items", {}))):
            alive.discard("array")
    return not alive
