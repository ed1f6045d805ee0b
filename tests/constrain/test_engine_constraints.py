"""Constraints inside the engine: valid outputs, identical tokens with and without jump-forward, bad input isolated."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from moeframe import Engine, SamplingParams
from moeframe.constrain.structural_tag import StructuralTag, Tag
from moeframe.workloads import WORKLOADS
from moeframe.workloads.json_extract import DEFAULT_SCHEMA

REGEXES = [r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)", r"\d{3}-\d{4}", r"(yes|no|maybe)", r"#[0-9a-f]{6}"]


def engine(path, backend: str, jump_forward: bool) -> Engine:
    return Engine.from_overrides(
        [f"model.path={path}", "device=cpu", "dtype=float32", f"constraint={backend}", f"constraint.jump_forward={str(jump_forward).lower()}"]
    )


@pytest.fixture(scope="module")
def path(checkpoint_factory):
    return checkpoint_factory("tiny-qwen2-moe")


@pytest.mark.parametrize("backend", ["xgrammar", "fsm"])
def test_engine_outputs_fullmatch_their_regex(path, backend: str) -> None:
    params = [SamplingParams(max_new_tokens=40, regex=r) for r in REGEXES]
    outs = engine(path, backend, True).generate(["Answer:"] * len(REGEXES), params)
    for regex, out in zip(REGEXES, outs):
        assert out.finish_reason == "stop", out
        assert re.fullmatch(regex, out.text), (regex, out.text)


@pytest.mark.parametrize("backend", ["xgrammar", "fsm"])
def test_jump_forward_gives_the_same_tokens_in_fewer_steps(path, backend: str) -> None:
    prompts = ["Order:", "JSON please:", "Customer record:"]
    params = SamplingParams(max_new_tokens=160, json_schema=DEFAULT_SCHEMA)
    fast, slow = engine(path, backend, True), engine(path, backend, False)
    with_jf, without_jf = fast.generate(prompts, params), slow.generate(prompts, params)
    assert [o.token_ids for o in with_jf] == [o.token_ids for o in without_jf]
    for out in with_jf:
        jsonschema.validate(json.loads(out.text), DEFAULT_SCHEMA)
    assert fast.stats()["forward_steps"] * 2 < slow.stats()["forward_steps"]


def test_invalid_constraint_fails_only_its_request(path) -> None:
    outs = engine(path, "xgrammar", True).generate(
        ["a", "b", "c"],
        [SamplingParams(max_new_tokens=5, regex="(unclosed"), SamplingParams(max_new_tokens=5), SamplingParams(max_new_tokens=3, choices=[])],
    )
    assert outs[0].finish_reason == "error" and "regex" in outs[0].error.lower()
    assert outs[1].finish_reason == "length" and len(outs[1].token_ids) == 5
    assert outs[2].finish_reason == "error"


def test_choice_output_is_one_of_the_choices(path) -> None:
    choices = ["red", "green", "blue violet"]
    outs = engine(path, "fsm", True).generate(["Colour:"] * 3, SamplingParams(max_new_tokens=10, choices=choices))
    assert all(o.text in choices and o.finish_reason == "stop" for o in outs)


def test_json_extract_workload_reports_validity_and_savings(path) -> None:
    eng = Engine.from_overrides(
        [f"model.path={path}", "device=cpu", "dtype=float32", "workload=json_extract", "workload.num_requests=2", "workload.progress=false"]
    )
    metrics = WORKLOADS.build(eng.cfg.workload).run(eng)
    assert metrics["validity_rate"] == 1.0
    assert metrics["same_outputs_without_jump_forward"] is True
    assert metrics["forward_steps_saved"] > 0
    assert metrics["mask_us_per_token"] > 0


TOOL_ARGUMENTS = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOL_CALL = re.compile(r'<tool_call>\n\{"name": "get_weather", "arguments": (.*?)\}\n</tool_call>', re.DOTALL)


@pytest.mark.parametrize("backend", ["xgrammar", "fsm"])
def test_engine_tool_calls_validate_and_jump_forward_keeps_their_tokens(path, backend: str) -> None:
    begin = '<tool_call>\n{"name": "get_weather", "arguments": '
    tag = StructuralTag((Tag(begin, TOOL_ARGUMENTS, "}\n</tool_call>"),), "<tool_call>", separator="\n")
    params = SamplingParams(max_new_tokens=120, structural_tag=tag)
    prompts = ["Weather in Paris?", "And in Oslo?", "Call the tool:"]
    with_jf = engine(path, backend, True).generate(prompts, params)
    without_jf = engine(path, backend, False).generate(prompts, params)
    assert [o.token_ids for o in with_jf] == [o.token_ids for o in without_jf]
    for out in with_jf:
        assert out.finish_reason == "stop", out
        calls = TOOL_CALL.findall(out.text)
        assert calls and TOOL_CALL.sub("", out.text).strip("\n") == ""
        for arguments in calls:
            jsonschema.validate(json.loads(arguments), TOOL_ARGUMENTS)
