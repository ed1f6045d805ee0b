"""Structural tags (tool calls): the free-text language, and both backends accepting the same outputs."""

from __future__ import annotations

import itertools
import json
import re

import jsonschema
import pytest
import torch

from constrain_helpers import random_model
from moeframe.constrain import ConstraintSpec
from moeframe.constrain.bitmask import allocate_bitmask
from moeframe.constrain.dfa import DEAD, compile_dfa
from moeframe.constrain.regex_syntax import parse_regex
from moeframe.constrain.step import mask_logits
from moeframe.constrain.structural_tag import StructuralTag, Tag, avoiding_regex
from moeframe.errors import RequestError

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 12}, "unit": {"enum": ["c", "f"]}},
    "required": ["city", "unit"],
}
TIME = {"type": "object", "properties": {"zone": {"type": "integer", "minimum": -12, "maximum": 12}}, "required": ["zone"]}
SCHEMAS = {"get_weather": WEATHER, "get_time": TIME}


def hermes_tag(free_text: bool, stop_after_first: bool = False) -> StructuralTag:
    tags = tuple(
        Tag(f'<tool_call>\n{{"name": "{name}", "arguments": ', schema, "}\n</tool_call>") for name, schema in SCHEMAS.items()
    )
    return StructuralTag(tags, "<tool_call>", free_text=free_text, stop_after_first=stop_after_first, separator="\n")


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo","unit":"c"}}\n</tool_call>'
CALL2 = '<tool_call>\n{"name": "get_time", "arguments": {"zone":-3}}\n</tool_call>'

# (free_text, stop_after_first, text, accepted as a whole output)
CASES = [
    (True, False, "plain words < and <tool but no call", True),
    (True, False, "", True),
    (True, False, "Sure. " + CALL, True),
    (True, False, "Sure. " + CALL + " then " + CALL2 + " done", True),
    (True, False, "a <tool_call> that opens no tag", False),
    (True, False, '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Oslo"}}\n</tool_call>', False),
    (True, False, '<tool_call>\n{"name": "delete_all", "arguments": {}}\n</tool_call>', False),
    (True, False, '<tool_call>\n{"name": "get_time", "arguments": {"zone": 3}}\n</tool_call>', False),  # compact JSON
    (True, True, "Sure. " + CALL, True),
    (True, True, CALL + " more", False),
    (False, False, CALL, True),
    (False, False, CALL + "\n" + CALL2, True),
    (False, False, "Sure. " + CALL, False),
    (False, False, "", False),
    (False, True, CALL + "\n" + CALL2, False),
    (False, True, CALL, True),
]


def accepts(backend, eos_id, spec: ConstraintSpec, text: str) -> bool:
    state = backend.new_state(backend.compile(spec))
    ids = backend.vocab.encode(text) if text else []
    return all(state.advance(t) for t in ids) and state.is_terminal() and state.advance(eos_id)


@pytest.mark.parametrize("free_text,stop_after_first,text,accepted", CASES)
def test_backend_accepts_exactly_the_tagged_outputs(backend, eos_id, free_text, stop_after_first, text, accepted):
    spec = ConstraintSpec(structural_tag=hermes_tag(free_text, stop_after_first))
    assert accepts(backend, eos_id, spec, text) == accepted


def test_avoiding_regex_matches_exactly_the_strings_without_the_trigger():
    """Brute force over every string of up to 7 characters of an alphabet that can build and break the trigger."""
    for trigger in ("<ab>", "<a", "x"):
        pattern = re.compile(avoiding_regex(trigger), re.DOTALL)
        dfa = compile_dfa(parse_regex(avoiding_regex(trigger)), 10_000)
        for length in range(8):
            for chars in itertools.product("<ab>x", repeat=length):
                text = "".join(chars)
                expected = trigger not in text
                assert bool(pattern.fullmatch(text)) == expected, (trigger, text)
                state = dfa.walk(1, text.encode())
                assert (state != DEAD and bool(dfa.accepting[state])) == expected, (trigger, text)


def test_a_trigger_that_repeats_its_first_character_is_refused_by_the_regex_form():
    with pytest.raises(RequestError, match="repeats its first character"):
        avoiding_regex("<a<")


def test_a_tag_must_begin_with_the_trigger():
    with pytest.raises(RequestError, match="does not start with the trigger"):
        StructuralTag((Tag("<call>", WEATHER, "</call>"),), "<tool_call>")


def generate_after(backend, eos_id, spec, prefix: str, seed: int, max_tokens: int = 400) -> str:
    """Teacher-force ``prefix`` through the constraint, then let a random model go on under its mask."""
    state = backend.new_state(backend.compile(spec))
    ids = backend.vocab.encode(prefix) if prefix else []
    assert all(state.advance(t) for t in ids)
    model = random_model(backend, seed, 1.0)
    bitmask = allocate_bitmask(1, backend.vocab_size)
    for _ in range(max_tokens):
        logits = model(ids).reshape(1, -1).clone()
        mask_logits(logits, [state], bitmask)
        token = int(torch.argmax(logits[0]))
        assert state.advance(token)
        if token == eos_id:
            return backend.vocab.decode(ids).decode("utf-8")
        ids.append(token)
    raise AssertionError(f"no end in {max_tokens} tokens")


CALL_RE = re.compile(r'<tool_call>\n\{"name": "(\w+)", "arguments": (.*?)\}\n</tool_call>', re.DOTALL)


def assert_valid_calls(text: str, at_least: int) -> None:
    calls = CALL_RE.findall(text)
    assert len(calls) >= at_least, text
    for name, arguments in calls:
        jsonschema.validate(json.loads(arguments), SCHEMAS[name])


@pytest.mark.parametrize("seed", range(3))
def test_a_started_call_always_completes_as_a_valid_call(backend, eos_id, seed):
    spec = ConstraintSpec(structural_tag=hermes_tag(free_text=True, stop_after_first=True))
    text = generate_after(backend, eos_id, spec, "I will look. <tool_call>", seed)
    assert text.startswith("I will look. ")
    assert_valid_calls(text, at_least=1)


@pytest.mark.parametrize("seed", range(3))
def test_calls_only_output_is_one_or_more_valid_calls(backend, eos_id, seed):
    spec = ConstraintSpec(structural_tag=hermes_tag(free_text=False))
    text = generate_after(backend, eos_id, spec, "", seed)
    assert CALL_RE.sub("", text).strip("\n") == ""
    assert_valid_calls(text, at_least=1)
