"""A constrained request with ignore_eos ends where its constraint ends, on every backend.

The mask allows EOS exactly when the constrained output is complete, and then
nothing may follow it; before this was handled, the FSM backend went on
emitting EOS until max_new_tokens and xgrammar raised on a terminated matcher.
"""

from __future__ import annotations

import re

import pytest

from moeframe import SamplingParams


@pytest.mark.parametrize("backend", ["fsm", "xgrammar"])
def test_a_constrained_request_ignoring_eos_stops_when_its_regex_is_complete(make_engine, backend) -> None:
    engine = make_engine("cache=none", f"constraint={backend}", "constraint.jump_forward=false")
    params = SamplingParams(max_new_tokens=40, ignore_eos=True, regex="(yes|no)")
    out = engine.generate([[5, 9, 14, 3], [7, 7, 2]], params)
    for result in out:
        assert result.finish_reason == "stop"
        assert re.fullmatch("(yes|no)", result.text)
        assert len(result.token_ids) < 40
