"""Whatever one request carries, the worst it can do is fail itself: its batch-mates get their tokens as if alone.

The cases are issue 24's: a temperature so small that logits / temperature
overflows, a regex whose language is empty (at temperature 0 it used to end
with "stop" and empty text, above 0 it made the batch's multinomial raise and
failed every request), plus the run-time guards behind them: a constraint
that dead-ends mid-output and a row of non-finite logits.
"""

from __future__ import annotations

import pytest
import torch

from moeframe import SamplingParams
from moeframe.constrain import ConstraintState
from moeframe.constrain.bitmask import apply_bitmask
from moeframe.engine.core import NON_FINITE
from moeframe.engine.request import Request
from moeframe.engine.sampler import sample

PROMPTS = [[5, 9, 14, 3, 8], [7, 7, 2], [11, 4, 6, 1]]
GREEDY = SamplingParams(max_new_tokens=6, ignore_eos=True)
SEEDED = SamplingParams(max_new_tokens=6, ignore_eos=True, temperature=0.8, seed=3)
EMPTY_LANGUAGE = r"[^\s\S]"


def others_alone(engine) -> list[list[int]]:
    return [o.token_ids for o in engine.generate([PROMPTS[0], PROMPTS[2]], [GREEDY, SEEDED])]


@pytest.mark.parametrize("temperature", [1e-38, 1e-45, 1e-60])
def test_a_tiny_temperature_samples_the_greedy_token_and_leaves_its_batch_mates_alone(make_engine, temperature) -> None:
    engine = make_engine("cache=none")
    tiny = SamplingParams(max_new_tokens=6, ignore_eos=True, temperature=temperature, seed=1)
    outs = engine.generate(PROMPTS, [GREEDY, tiny, SEEDED])
    assert [o.finish_reason for o in outs] == ["length"] * 3
    assert outs[1].token_ids == engine.generate([PROMPTS[1]], GREEDY)[0].token_ids
    assert [outs[0].token_ids, outs[2].token_ids] == others_alone(engine)


@pytest.mark.parametrize("backend", ["fsm", "xgrammar"])
@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_an_empty_language_regex_is_refused_alone(make_engine, backend, temperature) -> None:
    engine = make_engine("cache=none", f"constraint={backend}")
    empty = SamplingParams(max_new_tokens=6, temperature=temperature, regex=EMPTY_LANGUAGE)
    outs = engine.generate(PROMPTS, [GREEDY, empty, SEEDED])
    assert outs[1].finish_reason == "error" and "matches no" in outs[1].error
    assert outs[1].token_ids == []
    assert [outs[0].token_ids, outs[2].token_ids] == others_alone(engine)


class DeadEndAfter(ConstraintState):
    """A constraint state that allows any token for ``steps`` tokens, then none: a dead end a backend could reach."""

    def __init__(self, steps: int) -> None:
        super().__init__(vocab=None, eos_token_ids=(0,))
        self.left = steps

    def forced_continuation(self) -> list[int]:
        return []

    def is_terminal(self) -> bool:
        return False

    def forced_bytes(self) -> bytes:
        return b""

    def rollback(self, num_tokens: int) -> None:
        self.left += num_tokens

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = -1 if self.left > 0 else 0

    def advance(self, token_id: int) -> bool:
        self.left -= 1
        return self.left >= 0


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_a_constraint_that_dead_ends_ends_its_request_with_an_error_never_stop(make_engine, temperature) -> None:
    engine = make_engine("cache=radix")
    engine.core.apply_bitmask = apply_bitmask
    params = SamplingParams(max_new_tokens=6, temperature=temperature, seed=5)
    for prompt, p in zip(PROMPTS, [GREEDY, params, SEEDED]):
        req = engine.make_request(prompt, p)
        if p is params:
            req.constraint, dead = DeadEndAfter(2), req
        engine.core.add(req)
    others = [r for r in engine.core.requests.values() if r is not dead]
    while engine.core.has_work():
        engine.step()
    assert dead.finish_reason == "error" and "allows no token" in dead.error
    assert len(dead.output_ids) == 2
    assert [r.output_ids for r in others] == others_alone(engine)
    assert engine.built.pool.num_free_slots == engine.built.pool.num_slots - engine.built.cache.num_cached_tokens()


class RaisesAfter(DeadEndAfter):
    """A constraint state whose backend raises after ``steps`` tokens, in ``where`` (mask filling or advancing)."""

    def __init__(self, steps: int, where: str) -> None:
        super().__init__(steps)
        self.where = where

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        if self.left <= 0 and self.where == "fill_bitmask":
            raise RuntimeError("backend bug")
        bitmask[row] = -1

    def advance(self, token_id: int) -> bool:
        self.left -= 1
        if self.left < 0 and self.where == "advance":
            raise RuntimeError("backend bug")
        return True


@pytest.mark.parametrize("where", ["fill_bitmask", "advance"])
def test_a_constraint_backend_that_raises_fails_its_request_only(make_engine, where) -> None:
    engine = make_engine("cache=none")
    engine.core.apply_bitmask = apply_bitmask
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    reqs = [engine.make_request(p, q) for p, q in zip(PROMPTS, [GREEDY, params, SEEDED])]
    reqs[1].constraint = RaisesAfter(2, where)
    for req in reqs:
        engine.core.add(req)
    while engine.core.has_work():
        engine.step()
    assert reqs[1].finish_reason == "error" and "backend bug" in reqs[1].error
    assert [reqs[0].output_ids, reqs[2].output_ids] == others_alone(engine)


@pytest.mark.parametrize("overlap", ["true", "false"])
def test_non_finite_logits_end_that_sampled_request_alone(make_engine, overlap) -> None:
    engine = make_engine("cache=none", f"runner.overlap={overlap}")
    victim = SamplingParams(max_new_tokens=6, ignore_eos=True, temperature=1.0, seed=9)
    run = engine.built.runner.run

    def poisoned(scheduled, input_ids=None):
        out = run(scheduled, input_ids)
        for row, req in enumerate(scheduled.requests):
            if req.params is victim and len(req.output_ids) >= 3:
                out.logits[row] = float("nan")
        return out

    engine.built.runner.run = poisoned
    outs = engine.generate(PROMPTS, [GREEDY, victim, SEEDED])
    assert outs[1].finish_reason == "error" and outs[1].error == NON_FINITE
    assert len(outs[1].token_ids) == 3
    assert [outs[0].token_ids, outs[2].token_ids] == others_alone(engine)


def test_a_sampled_row_without_a_finite_maximum_is_flagged_and_the_others_draw_normally() -> None:
    logits = torch.randn(4, 40, generator=torch.Generator().manual_seed(0))
    logits[1] = float("nan")
    logits[2] = float("-inf")
    reqs = [Request(rid=i, prompt_ids=[1], params=SamplingParams(temperature=0.9)) for i in range(4)]
    reqs[0].params = SamplingParams()
    ids, invalid = sample(logits, reqs)
    assert invalid.tolist() == [False, True, True, False]
    assert ids[0].item() == logits[0].argmax().item()
    assert all(0 <= i < 40 for i in ids.tolist())


@pytest.mark.parametrize(
    "field, value",
    [("temperature", float("nan")), ("temperature", float("inf")), ("temperature", True), ("top_p", float("nan")),
     ("seed", 2**70), ("seed", 1.5), ("max_new_tokens", 2.0), ("stop_token_ids", ["a"]), ("ignore_eos", "yes")],
)
def test_a_bad_field_is_refused_at_admission_naming_it(make_engine, field, value) -> None:
    engine = make_engine("cache=none")
    params = SamplingParams(**({"max_new_tokens": 4} | {field: value}))
    outs = engine.generate(PROMPTS[:2], [GREEDY, params])
    assert outs[1].finish_reason == "error" and field in outs[1].error
    assert outs[0].finish_reason == "length"


@pytest.mark.parametrize("constraint", [{"json_schema": {"type": "object", "properties": {"a": {"type": "integer"}}}}, {"json_object": True}])
def test_a_stop_string_beside_a_json_constraint_is_refused_alone(make_engine, constraint) -> None:
    """A stop string could cut the JSON anywhere and end it with "stop" while it breaks the schema."""
    engine = make_engine("cache=none")
    outs = engine.generate(PROMPTS[:2], [GREEDY, SamplingParams(max_new_tokens=4, stop=["}"], **constraint)])
    assert outs[1].finish_reason == "error" and "stop strings cannot be combined" in outs[1].error
    assert outs[0].finish_reason == "length"
