"""Every constrained output of a random model matches its regex or validates against its schema."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from constrain_cases import REGEXES, SCHEMAS
from constrain_helpers import decode, random_model
from moeframe.constrain import ConstraintSpec
from moeframe.constrain.simulate import constrained_generate

SEEDS = (0, 1, 2)
MAX_TOKENS = 1500


def _validator(schema: dict) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


@pytest.mark.parametrize("pattern", REGEXES)
def test_random_model_output_fullmatches_regex(backend, eos_id, pattern):
    spec = ConstraintSpec(regex=pattern)
    for seed in SEEDS:
        ids, _ = constrained_generate(backend, spec, random_model(backend, seed, 1.0), MAX_TOKENS, eos_id, jump_forward=False)
        assert ids[-1] == eos_id, f"did not finish in {MAX_TOKENS} tokens"
        text = decode(backend, ids, eos_id)
        assert re.fullmatch(pattern, text), (pattern, text)


@pytest.mark.parametrize("schema", [s for s, _ in SCHEMAS], ids=[f"schema{i}" for i in range(len(SCHEMAS))])
def test_random_model_output_validates_against_schema(backend, eos_id, schema):
    spec = ConstraintSpec(json_schema=schema)
    for seed in SEEDS:
        ids, _ = constrained_generate(backend, spec, random_model(backend, seed, 1.0), MAX_TOKENS, eos_id, jump_forward=True)
        assert ids[-1] == eos_id, f"did not finish in {MAX_TOKENS} tokens"
        text = decode(backend, ids, eos_id)
        _validator(schema).validate(json.loads(text))


def test_random_model_output_is_one_of_the_choices(backend, eos_id):
    choices = ["yes", "no", "yes, but later", "n/a", "\u00e9t\u00e9"]
    for seed in range(8):
        ids, _ = constrained_generate(
            backend, ConstraintSpec(choices=choices), random_model(backend, seed, 0.0), 50, eos_id, jump_forward=False
        )
        assert decode(backend, ids, eos_id) in choices


def test_json_object_output_is_a_json_object(backend, eos_id):
    for seed in SEEDS:
        ids, _ = constrained_generate(
            backend, ConstraintSpec(json_object=True), random_model(backend, seed, 1.0), 2000, eos_id, jump_forward=True
        )
        assert ids[-1] == eos_id
        assert isinstance(json.loads(decode(backend, ids, eos_id)), dict)


def test_xgrammar_ebnf_output_is_in_the_grammar(backends, eos_id):
    backend = backends["xgrammar"]
    grammar = 'root ::= "(" expr ")"\nexpr ::= num | num "+" expr\nnum ::= [1-9] [0-9]?'
    for seed in SEEDS:
        ids, _ = constrained_generate(
            backend, ConstraintSpec(grammar=grammar), random_model(backend, seed, 1.0), 200, eos_id, jump_forward=False
        )
        assert re.fullmatch(r"\(([1-9][0-9]?\+)*[1-9][0-9]?\)", decode(backend, ids, eos_id))
