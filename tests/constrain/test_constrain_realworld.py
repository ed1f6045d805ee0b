"""Real-world schemas (JSONSchemaBench's MaskBench files), when a copy is at hand.

JSONSchemaBench (github:guidance-ai/jsonschemabench) carries no licence
file, so no sample of it ships here: set ``MOEFRAME_JSONSCHEMABENCH`` to a
git directory of that repository (or a folder of its ``maskbench/data``
files) to run this. ``tools/bench_schemas.py`` measures the whole sample;
this checks, on a small seeded one, what must never happen: a crash, and a
test instance the schema calls invalid that a compiled constraint accepts
(text it could write that violates the schema). Invalid there means invalid
to ``jsonschema`` without format checking: ``format`` is an annotation
unless a backend knows it (JSON Schema 2020-12, 7.2.1), and the benchmark's
instances that fail only a format are counted by the tool, not here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import jsonschema
import pytest

from moeframe.constrain import ConstraintSpec
from moeframe.errors import RequestError

SOURCE = os.environ.get("MOEFRAME_JSONSCHEMABENCH")
pytestmark = pytest.mark.skipif(not SOURCE, reason="MOEFRAME_JSONSCHEMABENCH is not set")


def bench_tool():
    path = Path(__file__).parents[2] / "tools" / "bench_schemas.py"
    spec = importlib.util.spec_from_file_location("bench_schemas", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_schemas", module)
    spec.loader.exec_module(module)
    return module


def test_no_invalid_instance_is_accepted_and_nothing_crashes(backend):
    tool = bench_tool()
    for case in tool.sample_cases(Path(SOURCE), per_split=2, seed=1):
        try:
            compiled = backend.compile(ConstraintSpec(json_schema=case.schema))
        except RequestError:
            continue
        validator = jsonschema.validators.validator_for(case.schema)(case.schema)
        for test in case.tests:
            if not validator.is_valid(test["data"]):
                assert not tool.accepts(backend, compiled, tool.compact(test["data"]), backend.vocab.encode), case.name
