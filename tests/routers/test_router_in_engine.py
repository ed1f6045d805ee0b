"""Every shipped router choice builds an engine and generates, recording expert load."""

from __future__ import annotations

import pytest

from moeframe import Engine, SamplingParams
from moeframe.config import CONF_DIR

ROUTER_CHOICES = sorted(p.stem for p in (CONF_DIR / "router").glob("*.yaml"))


@pytest.mark.parametrize("router", ROUTER_CHOICES)
def test_router_choice_generates(router: str, checkpoint_factory) -> None:
    engine = Engine.from_overrides(
        [f"model.path={checkpoint_factory('tiny-olmoe')}", "device=cpu", "dtype=float32", f"router={router}"]
    )
    out = engine.generate(["a b c", "hello there"], SamplingParams(max_new_tokens=3, ignore_eos=True))
    assert all(len(o.token_ids) == 3 for o in out)
    assert engine.stats()["expert_load"]["total"]["kept"] > 0
