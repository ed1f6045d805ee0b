"""Request-level validation: a bad constraint is a RequestError for that request alone."""

from __future__ import annotations

import pytest

from moeframe.constrain import CONSTRAINTS, ConstraintSpec
from moeframe.errors import RequestError


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"regex": "(ab"}, "invalid regex"),
        ({"regex": "a{3,2}"}, "invalid regex"),
        ({"json_schema": {"type": "strin"}}, "invalid JSON schema"),
        ({"json_schema": {"type": "object", "properties": {"a": {"minimum": "zero"}}}}, "invalid JSON schema"),
        ({"json_schema": "{not json"}, "not valid JSON"),
        ({"json_schema": "[1, 2]"}, "must be a JSON object"),
        ({"choices": []}, "non-empty"),
        ({"choices": ["a", 3]}, "string"),
        ({"grammar": "  "}, "EBNF"),
        ({"regex": "a", "choices": ["a"]}, "exactly one"),
        ({}, "exactly one"),
    ],
)
def test_bad_spec_raises_request_error_naming_the_problem(fields, message):
    with pytest.raises(RequestError, match=message):
        ConstraintSpec(**fields)


def test_unconstrained_request_has_no_spec():
    assert ConstraintSpec.from_request() is None
    assert ConstraintSpec.from_request(choices=["x"]).kind == "choices"


def test_schema_given_as_text_or_dict_shares_one_compiled_constraint(backend):
    as_dict = ConstraintSpec(json_schema={"type": "integer", "minimum": 0})
    as_text = ConstraintSpec(json_schema='{"minimum": 0, "type": "integer"}')
    assert backend.compile(as_dict) is backend.compile(as_text)


@pytest.mark.parametrize(
    "spec",
    [
        ConstraintSpec(regex=r"(?=a)a"),
        ConstraintSpec(regex=r"(a)\1"),
        ConstraintSpec(json_schema={"type": "array", "uniqueItems": True}),
        ConstraintSpec(json_schema={"type": "number", "minimum": 0.5}),
        ConstraintSpec(json_schema={"$defs": {"n": {"type": "array", "items": {"$ref": "#/$defs/n"}}}, "$ref": "#/$defs/n"}),
        ConstraintSpec(grammar='root ::= "a"'),
    ],
    ids=["lookahead", "backref", "uniqueItems", "fractional-bound", "recursive-ref", "ebnf"],
)
def test_fsm_refuses_what_it_cannot_express(backends, spec):
    with pytest.raises(RequestError):
        backends["fsm"].compile(spec)


def test_xgrammar_reports_a_bad_grammar_as_request_error(backends):
    with pytest.raises(RequestError, match="xgrammar"):
        backends["xgrammar"].compile(ConstraintSpec(grammar="root ::= undefined_rule"))


def test_a_refused_request_leaves_the_backend_serving_others(backend, eos_id):
    with pytest.raises(RequestError):
        backend.compile(ConstraintSpec(regex=r"(?<=a)b"))
    state = backend.new_state(backend.compile(ConstraintSpec(choices=["ok"])))
    assert all(state.advance(t) for t in backend.vocab.encode("ok")) and state.is_terminal()


def test_none_backend_refuses_constrained_requests(tokenizer, eos_id):
    backend = CONSTRAINTS.build({"name": "none"}, tokenizer=tokenizer, vocab_size=4100, eos_token_ids=(eos_id,))
    with pytest.raises(RequestError, match="constraint=none"):
        backend.compile(ConstraintSpec(regex="a"))
