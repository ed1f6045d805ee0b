"""fork(n): branches share their prefix, which the radix cache computes once, and generate together."""

from __future__ import annotations

from moeframe.frontend import Backend, EngineBackend, function, gen

PREFIX = (
    "Chapter one. The lighthouse keeper counted the ships that passed the northern rocks each night, "
    "writing their names in a ledger that nobody else had read for forty years. "
)


@function
def four_ships(s, prefix: str) -> None:
    s += prefix
    branches = s.fork(4)
    for i, branch in enumerate(branches):
        branch += f"Ship {i}: " + gen("name", max_tokens=4)
    s.set_var("names", [b["name"] for b in branches])
    s.set_var("texts", [b.text() for b in branches])


def test_fork4_computes_the_shared_prefix_once(backend: Backend, engine_backend: EngineBackend) -> None:
    prefix = f"({type(backend).__name__}) " + PREFIX  # a prefix no earlier test cached
    num_prefix = len(engine_backend.loop.call(lambda e: e.encode(prefix)).result())
    before = backend.stats()
    state = four_ships.run(prefix, backend=backend)
    after = backend.stats()
    prefilled = after["prefill_tokens"] - before["prefill_tokens"]
    matched = after["cache"]["matched_tokens"] - before["cache"]["matched_tokens"]
    # the prefix once; each branch adds only its own few tokens ("Ship i: "), not the prefix again
    assert num_prefix > 30
    assert prefilled < num_prefix + 4 * 8
    assert matched >= 4 * (num_prefix - 1)
    assert state.text() == prefix
    assert state["texts"] == [f"{prefix}Ship {i}: {name}" for i, name in enumerate(state["names"])]


def test_fork_branches_generate_in_shared_batches(engine_backend: EngineBackend) -> None:
    before = engine_backend.stats()
    four_ships.run("(batching) " + PREFIX, backend=engine_backend)
    after = engine_backend.stats()
    steps = after["forward_steps"] - before["forward_steps"]
    generated = after["generated_tokens"] - before["generated_tokens"]
    assert steps < generated  # one request at a time would need a step per token

