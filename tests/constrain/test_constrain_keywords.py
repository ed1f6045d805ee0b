"""Every JSON Schema keyword is enforced or refused by name; unsatisfiable constraints and budgets are refused.

Enforced means: instances the ``jsonschema`` library calls valid are accepted
and ones it calls invalid are rejected, walked token by token through a
fresh state and ending terminal.
"""

from __future__ import annotations

import time

import jsonschema
import pytest
import torch

from constrain_helpers import encode_compact
from moeframe.constrain import (
    CONSTRAINTS,
    BudgetError,
    ConstraintSpec,
    UnsatisfiableError,
    UnsupportedKeywordError,
    allocate_bitmask,
    mask_logits,
)
from moeframe.constrain.fsm import FSMBackend, FSMParams
from moeframe.constrain.schema_normal import normalize_schema
from moeframe.constrain.vocab import TokenVocab

from test_constrain_no_overrestriction import accepts

# (schema, valid instances, invalid instances): each enforced by both backends
ENFORCED = {
    "annotations": (
        {"type": "object", "id": "urn:x", "$comment": "c", "example": {"a": 1}, "x-owner": "me", "readonly": True,
         "self": {"vendor": "v"}, "someUnknownWord": [1], "properties": {"a": {"type": "integer", "title": "A"}},
         "required": ["a"]},
        [{"a": 1}], [{}, {"a": "x"}],
    ),
    "allOf-required": ({"type": "object", "allOf": [{"required": ["a"]}]}, [{"a": 1}], [1, {}]),
    "allOf-bounds": ({"allOf": [{"type": "integer", "minimum": 0}, {"maximum": 5}]}, [0, 5], [-1, 6, "a"]),
    "allOf-properties": (
        {"type": "object", "allOf": [{"properties": {"a": {"type": "string"}}, "required": ["a"]},
                                     {"properties": {"b": {"type": "integer"}}, "required": ["b"]}]},
        [{"a": "x", "b": 1}], [{"a": "x"}, {"b": 1}, {"a": 1, "b": 1}],
    ),
    "required-without-properties": ({"type": "object", "required": ["k"]}, [{"k": 1}, {"k": [1, 2]}], [{}]),
    "oneOf-disjoint": (
        {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 2}]}, [1, "ab"], [1.5, "abc", None],
    ),
    "oneOf-discriminated": (
        {"type": "object", "required": ["x"], "oneOf": [
            {"properties": {"kind": {"const": "a"}, "x": {"type": "integer"}}, "required": ["kind"]},
            {"properties": {"kind": {"const": "b"}, "x": {"type": "string"}}, "required": ["kind"]}]},
        [{"kind": "a", "x": 1}, {"kind": "b", "x": "s"}], [{"kind": "a", "x": "s"}, {"kind": "a"}, {"kind": "c", "x": 1}],
    ),
    "anyOf-with-siblings": (
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
         "anyOf": [{"properties": {"b": {"type": "string"}}, "required": ["b"]}, {"properties": {"c": {"type": "boolean"}}, "required": ["c"]}]},
        [{"a": 1, "b": "x"}, {"a": 1, "c": True}], [{"b": "x"}, {"a": 1}],
    ),
    "draft4-exclusive": (
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "integer", "minimum": 0, "exclusiveMinimum": True,
         "maximum": 3}, [1, 3], [0, 4],
    ),
    "enum-with-type": ({"type": "string", "enum": ["a", 1, "bb"], "maxLength": 1}, ["a"], ["bb", 1]),
    "const": ({"const": {"a": [1, 2]}}, [{"a": [1, 2]}], [{"a": [1]}]),
    "ref-with-siblings": (
        {"$defs": {"s": {"type": "string"}}, "properties": {"p": {"$ref": "#/$defs/s", "maxLength": 2}}, "type": "object",
         "required": ["p"]}, [{"p": "ab"}], [{"p": "abc"}, {"p": 1}],
    ),
    "pattern-search": ({"type": "string", "pattern": "b[0-9]"}, ["b1", "xb2y"], ["b", "x1"]),
    "length-folded-into-pattern": ({"type": "string", "pattern": "^[a-z]+$", "maxLength": 3}, ["abc"], ["abcd", ""]),
    "length-implied-by-pattern": ({"type": "string", "pattern": "^[0-9]{3}$", "minLength": 1, "maxLength": 5}, ["123"], ["12"]),
    "not-type": ({"type": ["string", "integer"], "not": {"type": "string"}}, [3], ["a", 1.5]),
    "not-anything-on-optional-property": ({"type": "object", "properties": {"a": {"not": {}}, "b": {"type": "integer"}}},
                                          [{"b": 1}, {}], [{"a": 1}]),
    "oneOf-disjoint-through-ref": ({"$defs": {"s": {"type": "string"}}, "oneOf": [{"$ref": "#/$defs/s"}, {"type": "null"}]},
                                   ["x", None], [1]),
    "dependentRequired": ({"type": "object", "properties": {"a": {}, "b": {"type": "integer"}}, "dependentRequired": {"a": ["b"]}},
                          [{"a": 1, "b": 2}, {"b": 2}, {}], [{"a": 1}]),
    "dependencies-schema": ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "properties": {"a": {"type": "integer"}, "b": {}},
                             "dependencies": {"a": {"properties": {"b": {"type": "string"}}, "required": ["b"]}}},
                            [{"a": 1, "b": "x"}, {"b": 3}], [{"a": 1}, {"a": 1, "b": 3}]),
    "multipleOf-one-on-number": ({"type": "number", "multipleOf": 1}, [3, -2], [1.5]),
    "oneOf-closed-objects": (
        {"oneOf": [{"type": "object", "properties": {"k": {"type": "string"}, "s": {"type": "string"}}, "required": ["k", "s"]},
                   {"type": "object", "properties": {"r": {"type": "integer"}}, "required": ["r"]}, {"type": "null"}]},
        [{"k": "a", "s": "b"}, {"r": 1}, None], [{"k": "a"}, {"r": "x"}, 1, {"k": "a", "s": "b", "r": 1}],
    ),
    "oneOf-enum-outside-pattern": ({"oneOf": [{"type": "string", "pattern": "^[0-9]{3}$"}, {"enum": [""]}]},
                                   ["123", ""], ["12", 1]),
    "unanchored-pattern-filling-maxLength": ({"type": "string", "pattern": "[0-9]{4}", "maxLength": 4}, ["1234"], ["x1234", "123"]),
    "pattern-alternation-in-group": ({"type": "string", "pattern": "^(true|false)$"}, ["true", "false"], ["tru", "truex", "xfalse"]),
    "pattern-top-level-alternation": ({"type": "string", "pattern": "^ab$|^cd$"}, ["ab", "cd"], ["abcd", "a", "xcd"]),
    "untyped-pattern": ({"anyOf": [{"type": "boolean"}, {"pattern": "^(true|false)$"}]}, [True, "true", 3, None],
                        ["tru", "yes"]),
    "untyped-bounds": ({"minimum": 3, "maxLength": 2}, [3, "ab", None], [2, "abc"]),
    "integer-fractional-bounds": ({"type": "integer", "minimum": 1.5, "exclusiveMaximum": 4.5}, [2, 4], [1, 5]),
    "pattern-anchored": ({"type": "string", "pattern": "^[a-z]+$"}, ["abc"], ["ab1", ""]),
    "unknown-format-is-annotation": ({"type": "string", "format": "color-name", "maxLength": 3}, ["red"], ["green"]),
    "integer-bounds": ({"type": "integer", "exclusiveMinimum": -3, "maximum": 12}, [-2, 12], [-3, 13]),
    "array-bounds": ({"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 2}, [[True]], [[], [True] * 3, [1]]),
    "uniqueItems-false": ({"type": "array", "items": {"type": "integer"}, "uniqueItems": False}, [[1, 1]], [["a"]]),
    "additionalProperties-schema": ({"type": "object", "additionalProperties": {"type": "integer"}}, [{"a": 1}, {}], [{"a": "s"}]),
}
XGRAMMAR_ONLY = {
    "draft4-tuple-items": (
        {"$schema": "http://json-schema.org/draft-04/schema#", "type": "array",
         "items": [{"type": "integer"}, {"type": "string"}], "additionalItems": False}, [[1, "a"], [1]], [["a"], [1, "a", 2]],
    ),
    "multipleOf-integer": ({"type": "integer", "multipleOf": 3}, [6, -3, 0], [7]),
    "minProperties": ({"type": "object", "minProperties": 1, "maxProperties": 2}, [{"a": 1}], [{}, {"a": 1, "b": 2, "c": 3}]),
    "recursive-ref": (
        {"$defs": {"n": {"type": "object", "properties": {"c": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"},
        [{"c": {"c": {}}}], [{"c": 1}],
    ),
}
# (schema, the keyword the error must name)
REFUSED = {
    "uniqueItems": ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    "not": ({"not": {"type": "integer"}}, "not"),
    "contains": ({"type": "array", "contains": {"const": 1}}, "contains"),
    "if": ({"if": {"type": "integer"}, "then": {"minimum": 3}}, "if"),
    "dependentRequired-open": ({"type": "object", "additionalProperties": {"type": "integer"}, "dependentRequired": {"a": ["b"]}},
                               "dependentRequired"),
    "dependencies-open": ({"$schema": "http://json-schema.org/draft-07/schema#", "type": "object", "additionalProperties": {}, "dependencies": {"a": {"required": ["b"]}}},
                          "dependentSchemas"),
    "patternProperties": ({"type": "object", "patternProperties": {"^x": {"type": "integer"}, "^y": {"type": "string"}}},
                          "patternProperties"),
    "oneOf-overlapping": ({"oneOf": [{"type": "integer"}, {"type": "number", "maximum": 5}]}, "oneOf"),
    "allOf-two-patterns": ({"type": "string", "allOf": [{"pattern": "^a"}, {"pattern": "b$"}]}, "allOf"),
    "multipleOf-number": ({"type": "number", "multipleOf": 0.5}, "multipleOf"),
    "length-beside-pattern": ({"type": "string", "pattern": "^(ab)+$", "maxLength": 5}, "maxLength"),
}
UNSATISFIABLE = {
    "not-anything": {"not": {}},
    "false": False,
    "required-forbidden": {"type": "object", "properties": {"a": {}}, "required": ["b"], "additionalProperties": False},
    "allOf-string-integer": {"allOf": [{"type": "string"}, {"type": "integer"}]},
    "enum-none-of-type": {"type": "integer", "enum": ["a", "b"]},
    "crossed-bounds": {"type": "integer", "minimum": 5, "maximum": 4},
    "required-unsatisfiable": {"type": "object", "properties": {"a": {"allOf": [{"type": "null"}, {"type": "boolean"}]}},
                               "required": ["a"]},
}


def check_enforced(backend, schema, valid, invalid) -> None:
    validator = jsonschema.validators.validator_for(schema)(schema)
    spec = ConstraintSpec(json_schema=schema) if schema is not False else None
    eos = backend.eos_token_ids[0]
    for instance in valid:
        assert validator.is_valid(instance), instance
        assert accepts(backend, spec, encode_compact(instance), eos), f"valid {instance!r} rejected"
    for instance in invalid:
        assert not validator.is_valid(instance), instance
        assert not accepts(backend, spec, encode_compact(instance), eos), f"invalid {instance!r} accepted"


@pytest.mark.parametrize("case", sorted(ENFORCED))
def test_keyword_is_enforced(backend, case):
    check_enforced(backend, *ENFORCED[case])


@pytest.mark.parametrize("case", sorted(XGRAMMAR_ONLY))
def test_keyword_is_enforced_by_xgrammar(backends, case):
    check_enforced(backends["xgrammar"], *XGRAMMAR_ONLY[case])


@pytest.mark.parametrize("case", sorted(XGRAMMAR_ONLY))
def test_fsm_refuses_what_only_xgrammar_enforces_by_name(backends, case):
    with pytest.raises(UnsupportedKeywordError, match="'fsm'"):
        backends["fsm"].compile(ConstraintSpec(json_schema=XGRAMMAR_ONLY[case][0]))


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unenforceable_keyword_is_refused_by_name(backend, case):
    schema, keyword = REFUSED[case]
    with pytest.raises(UnsupportedKeywordError) as info:
        backend.compile(ConstraintSpec(json_schema=schema))
    assert info.value.keyword == keyword
    assert f"'{keyword}'" in str(info.value) and f"'{info.value.backend}'" in str(info.value)


@pytest.mark.parametrize("case", sorted(UNSATISFIABLE))
def test_unsatisfiable_schema_is_refused(backend, case):
    schema = UNSATISFIABLE[case]
    with pytest.raises(UnsatisfiableError):
        backend.compile(ConstraintSpec(json_schema=schema)) if isinstance(schema, dict) else normalize_schema(schema)


@pytest.mark.parametrize("regex", [r"[^\s\S]", r"(a[^\s\S])+", r"x[^\d\D]{2}"])
def test_empty_language_regex_is_refused(backend, regex):
    with pytest.raises(UnsatisfiableError):
        backend.compile(ConstraintSpec(regex=regex))


def test_regex_alternative_that_matches_nothing_is_pruned(backends, eos_id):
    backend = backends["fsm"]
    spec = ConstraintSpec(regex=r"a[^\s\S]|b")
    assert accepts(backend, spec, "b", eos_id)
    state = backend.new_state(backend.compile(spec))
    bitmask = allocate_bitmask(1, backend.vocab_size)
    state.fill_bitmask(bitmask, 0)
    assert not any(backend.vocab.token_bytes[t].startswith(b"a") for t in range(backend.vocab_size)
                   if bitmask[0, t // 32] >> (t % 32) & 1)


def nested_optional_schema(depth: int, width: int) -> dict:
    """``depth`` levels of objects, each with ``width`` optional properties, the last holding the next level.

    Issue 24's case (8 levels of 3 is a 1.1 KB schema): each optional member
    repeats the members after it in the regex, so the regex grows
    exponentially with depth.
    """
    node: dict = {"type": "string"}
    for level in range(depth):
        properties = {f"field_{level}_{i}": {"type": "string", "maxLength": 8} for i in range(width - 1)}
        node = {"type": "object", "properties": {**properties, f"next_{level}": node}}
    return node


def test_fsm_regex_budget_fails_fast_on_exponential_nesting(tokenizer, eos_id):
    params = FSMParams(max_regex_chars=200_000)
    backend = CONSTRAINTS.build({"name": "fsm", "max_regex_chars": 200_000}, tokenizer=tokenizer, vocab_size=4100,
                                eos_token_ids=(eos_id,))
    assert backend.params == params
    start = time.monotonic()
    with pytest.raises(BudgetError, match="max_regex_chars"):
        backend.compile(ConstraintSpec(json_schema=nested_optional_schema(8, 3)))
    assert time.monotonic() - start < 10.0  # the budget's point, with slack: unbounded, this ran past 120 s and 3.9 GB


def test_fsm_time_budget_stops_the_dfa(tokenizer, eos_id):
    backend = CONSTRAINTS.build({"name": "fsm", "compile_timeout_s": 0.001, "max_dfa_states": 10**6},
                                tokenizer=tokenizer, vocab_size=4100, eos_token_ids=(eos_id,))
    with pytest.raises(BudgetError, match="compile_timeout_s"):
        backend.compile(ConstraintSpec(regex=r"[a-z0-9]{0,200}@[a-z]{1,200}"))


def test_xgrammar_time_budget_kills_the_compiler_and_recovers(tokenizer, eos_id):
    backend = CONSTRAINTS.build({"name": "xgrammar", "compile_timeout_s": 0.05}, tokenizer=tokenizer, vocab_size=4100,
                                eos_token_ids=(eos_id,))
    backend.compile(ConstraintSpec(regex="warm"))  # starts the compiler process, outside any budget
    wide = {"type": "object", "properties": {f"p{i}": {"type": "string", "pattern": "^[a-z]{1,40}@[a-z]{1,30}$"}
                                             for i in range(80)}}
    with pytest.raises(BudgetError, match="compile_timeout_s"):
        backend.compile(ConstraintSpec(json_schema=wide))
    assert accepts(backend, ConstraintSpec(regex="ok|fine"), "fine", eos_id)


def test_dead_end_is_reported_with_its_row():
    """A vocabulary without the byte 'c': after "a" the regex "ac" is alive but no token continues it."""
    vocab = TokenVocab(token_bytes=(b"<eos>", b"a", b"b"), encode=lambda text: [1 if ch == "a" else 2 for ch in text])
    backend = FSMBackend(FSMParams(), vocab, eos_token_ids=(0,))
    stuck, free = backend.new_state(backend.compile(ConstraintSpec(regex="ac|b"))), None
    assert stuck.advance(1)
    logits = torch.zeros(2, 3)
    dead = mask_logits(logits, [stuck, free])
    assert list(dead) == [0] and "allows no token" in str(dead[0])
    assert torch.isinf(logits[0]).all() and torch.isfinite(logits[1]).all()


XGRAMMAR_CLOSED_PATTERN_PROPERTIES = {
    "map": ({"type": "object", "patternProperties": {"^x-": {"type": "integer"}}, "additionalProperties": False},
            [{"x-a": 1}, {}], [{"x-a": "s"}, {"b": 1}]),
    "listed": ({"type": "object", "properties": {"x-a": {"minimum": 0}}, "patternProperties": {"^x-": {"type": "integer"}}},
               [{"x-a": 1}], [{"x-a": 1.5}, {"x-a": -1}]),
}


@pytest.mark.parametrize("case", sorted(XGRAMMAR_CLOSED_PATTERN_PROPERTIES))
def test_pattern_properties_enforced_on_closed_objects(backends, case):
    check_enforced(backends["xgrammar"], *XGRAMMAR_CLOSED_PATTERN_PROPERTIES[case])


@pytest.fixture(scope="module")
def open_xgrammar(tokenizer, eos_id):
    return CONSTRAINTS.build({"name": "xgrammar", "open_objects": True}, tokenizer=tokenizer, vocab_size=4100,
                             eos_token_ids=(eos_id,))


def test_open_objects_take_unlisted_properties(open_xgrammar):
    check_enforced(open_xgrammar, {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                   [{"a": 1}, {"a": 1, "b": [1, 2], "c": {"d": None}}], [{"b": 1}, {"a": "x", "b": 1}])


@pytest.mark.parametrize("case", ["oneOf-closed-objects", "dependentRequired", "allOf-properties"])
def test_open_objects_still_enforce_what_closed_rewrites_need(open_xgrammar, case):
    check_enforced(open_xgrammar, *ENFORCED[case])
