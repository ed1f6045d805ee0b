"""Constraints accept every valid output: matching strings and schema instances, tokenised naturally."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings

from constrain_cases import REGEXES, SCHEMAS
from constrain_helpers import encode_compact, python_matches
from moeframe.constrain import ConstraintBackend, ConstraintSpec

EXAMPLES = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))


def accepts(backend: ConstraintBackend, spec: ConstraintSpec, text: str, eos_id: int) -> bool:
    """Whether the state takes ``text``'s natural tokenisation token by token, ends terminal and takes EOS."""
    state = backend.new_state(backend.compile(spec))
    ids = backend.vocab.encode(text)
    assert backend.vocab.decode(ids) == text.encode("utf-8")
    return all(state.advance(t) for t in ids) and state.is_terminal() and state.advance(eos_id)


@pytest.mark.parametrize("pattern", REGEXES)
def test_strings_matching_regex_are_accepted(backend, eos_id, pattern):
    spec = ConstraintSpec(regex=pattern)

    @EXAMPLES
    @given(python_matches(re.compile(pattern, re.ASCII)))
    def check(text: str) -> None:
        assert accepts(backend, spec, text, eos_id), text

    check()


@pytest.mark.parametrize(("schema", "instances"), SCHEMAS, ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_schema_instances_are_accepted(backend, eos_id, schema, instances):
    spec = ConstraintSpec(json_schema=schema)
    cls = jsonschema.validators.validator_for(schema)
    for instance in instances:
        cls(schema, format_checker=cls.FORMAT_CHECKER).validate(instance)
        assert accepts(backend, spec, encode_compact(instance), eos_id), instance


def test_every_choice_is_accepted_in_any_tokenisation(backend, eos_id):
    choices = ["yes", "no", "yes, but later", "n/a", "\u00e9t\u00e9"]
    spec = ConstraintSpec(choices=choices)
    for choice in choices:
        assert accepts(backend, spec, choice, eos_id)
        byte_ids = [backend.vocab.token_bytes.index(bytes([b])) for b in choice.encode("utf-8")]
        state = backend.new_state(backend.compile(spec))
        assert all(state.advance(t) for t in byte_ids) and state.is_terminal()


def test_json_object_accepts_nested_objects(backend, eos_id):
    value = {"a": [1, "x", None], "b": {"c": True}, "d": -2.5e-3, "e": ""}
    assert accepts(backend, ConstraintSpec(json_object=True), json.dumps(value, separators=(",", ":")), eos_id)


def test_text_outside_the_regex_is_rejected(backend, eos_id):
    spec = ConstraintSpec(regex=r"\d{3}-\d{4}")
    assert not accepts(backend, spec, "123-456", eos_id)  # too short: not terminal
    state = backend.new_state(backend.compile(spec))
    assert not all(state.advance(t) for t in backend.vocab.encode("12a"))


def test_fsm_accepts_escapes_in_length_bounded_strings(backends, eos_id):
    # xgrammar 0.2.8 cannot: its length-bounded strings take no escapes (see xgrammar_backend's docstring)
    spec = ConstraintSpec(json_schema={"type": "string", "maxLength": 6})
    assert accepts(backends["fsm"], spec, encode_compact('a"\\\n\u00e9'), eos_id)
    assert not accepts(backends["fsm"], spec, encode_compact("1234567"), eos_id)
