"""Overlapped decode (runner.overlap) changes when steps launch, never what the engine outputs.

Random workloads (shared prefixes, stop tokens and stop strings that the
greedy continuation really contains, sampled requests with top-k and top-p
mixed with greedy ones, aborts while requests run, a pool small enough to
preempt) run once with overlap on and once off, each on a fresh engine of
the same seed, on every cache; every request's tokens, text and finish
reason must match, and the overlapped run must really have launched steps
ahead. Staggered workloads add arrivals while requests run, and their
sampled requests all carry a seed: a request that arrives while a step is in
flight joins one step later, so unseeded rows, which share the global
generator in batch order, would get other draws (the engine's docstring
says so). Workloads that all arrive at once sample unseeded rows too.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest
from overlap_runs import Planned, Run, drive

from moeframe import Engine, SamplingParams

CONFIGS = {
    "none-roomy": ["cache=none", "cache.max_tokens=2048"],
    "radix-roomy": ["cache=radix", "cache.max_tokens=2048"],
    "paged16-roomy": ["cache=paged", "cache.block_size=16", "cache.max_tokens=2048"],
    "none-tight": ["cache=none", "cache.max_tokens=48", "scheduler.chunk_size=16", "scheduler.max_batch_tokens=32"],
    "radix-tight": ["cache=radix", "cache.max_tokens=48", "scheduler.chunk_size=16", "scheduler.max_batch_tokens=32"],
    "paged4-tight": ["cache=paged", "cache.block_size=4", "cache.max_tokens=48", "scheduler.chunk_size=16", "scheduler.max_batch_tokens=32"],
}
SEEDS = range(4)
WORKLOADS = [(seed, staggered) for seed in SEEDS for staggered in (True, False)]
PROBE_TOKENS = 20


def sampling(rng: random.Random, params: SamplingParams, seeded: bool) -> None:
    """Half the requests sample: some temperature, maybe top-k and top-p, a seed unless ``seeded`` is False by chance."""
    if rng.random() < 0.5:
        return
    params.temperature = rng.choice([0.6, 1.0, 1.5])
    params.top_k = rng.choice([-1, -1, 3, 40])
    params.top_p = rng.choice([1.0, 1.0, 0.9, 0.5])
    if seeded or rng.random() < 0.5:
        params.seed = rng.randrange(1000)


def plan_workload(seed: int, staggered: bool, probe: Engine) -> list[Planned]:
    """Prompts (some sharing a prefix) and settings, with stops taken from each prompt's greedy continuation.

    ``staggered``: requests arrive over the first steps, and every sampled one has a seed.
    """
    rng = random.Random(seed)
    vocab = probe.spec.vocab_size
    prompts: list[list[int]] = []
    for _ in range(rng.randint(4, 8)):
        head = list(rng.choice(prompts)[: rng.randint(1, 8)]) if prompts and rng.random() < 0.4 else []
        prompts.append(head + [rng.randrange(1, vocab) for _ in range(rng.randint(2, 14))])
    free = probe.generate(prompts, SamplingParams(max_new_tokens=PROBE_TOKENS, ignore_eos=True))
    plan = []
    for i, (prompt, out) in enumerate(zip(prompts, free)):
        params = SamplingParams(max_new_tokens=rng.randint(1, 24), ignore_eos=rng.random() < 0.5)
        if rng.random() < 0.5:
            params.stop_token_ids = [rng.choice(out.token_ids[1:])]
        if rng.random() < 0.3 and len(out.text) > 4:
            at = rng.randrange(len(out.text) - 2)
            params.stop = [out.text[at : at + 2]]
        sampling(rng, params, seeded=staggered)
        arrival = 0 if i < 2 or not staggered else rng.randint(0, 8)
        abort_after = rng.randint(1, params.max_new_tokens) if rng.random() < 0.2 else None
        plan.append(Planned(prompt, params, arrival, abort_after))
    return plan


@pytest.fixture(scope="module")
def runs(make_engine: Callable[..., Engine]) -> Callable[[str, int, bool], tuple[Run, Run]]:
    """(config, seed, staggered) -> its workload's runs with overlap on and off, made once per module.

    Each engine is built just before it runs, so both start from the same global generator state.
    """
    probe = make_engine("cache=none", "cache.max_tokens=2048", "runner.overlap=false")
    made: dict[tuple[str, int, bool], tuple[Run, Run]] = {}

    def get(config: str, seed: int, staggered: bool) -> tuple[Run, Run]:
        if (config, seed, staggered) not in made:
            plan = plan_workload(seed, staggered, probe)
            on, off = (drive(make_engine(*CONFIGS[config], f"runner.overlap={o}"), plan) for o in ("true", "false"))
            made[config, seed, staggered] = on, off
        return made[config, seed, staggered]

    return get


@pytest.mark.parametrize(("seed", "staggered"), WORKLOADS)
@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_workloads_give_the_same_outputs_with_overlap_on_and_off(runs, config, seed, staggered):
    on, off = runs(config, seed, staggered)
    assert on.results() == off.results()
    assert on.engine.core.stats.generated_tokens == off.engine.core.stats.generated_tokens


@pytest.mark.parametrize("config", list(CONFIGS))
def test_random_workloads_launch_steps_ahead_only_with_overlap_on(runs, config):
    pairs = [runs(config, *workload) for workload in WORKLOADS]
    assert sum(on.engine.core.stats.ahead_steps for on, _ in pairs) > 0
    assert all(off.engine.core.stats.ahead_steps == 0 for _, off in pairs)


@pytest.mark.parametrize("config", ["radix-tight", "paged4-tight", "none-tight"])
def test_tight_pool_preempts_with_overlap_on(runs, config):
    assert sum(runs(config, *workload)[0].engine.built.scheduler.num_preemptions for workload in WORKLOADS) > 0


@pytest.mark.parametrize("config", list(CONFIGS))
def test_no_slot_leak_with_overlap_on(runs, config):
    for workload in WORKLOADS:
        engine = runs(config, *workload)[0].engine
        pool, cache = engine.built.pool, engine.built.cache
        assert pool.num_free_slots == pool.num_slots - cache.num_cached_tokens()


def test_greedy_batch_of_one_launches_every_decode_step_after_the_first_ahead(make_engine):
    params = SamplingParams(max_new_tokens=64, ignore_eos=True)
    on, off = (make_engine("cache=radix", f"runner.overlap={o}") for o in ("true", "false"))
    assert on.generate([[5, 9, 14, 3]], params)[0].token_ids == off.generate([[5, 9, 14, 3]], params)[0].token_ids
    # Step 1 prefills; steps 2..64 each go ahead, the first decode launched before the prefill's token is read.
    assert on.core.stats.ahead_steps == on.stats()["ahead_steps"] == 64 - 1
    assert on.core.stats.forward_steps == off.core.stats.forward_steps == 64


def test_a_request_that_stops_before_an_ahead_launch_gets_no_extra_token(make_engine):
    prompts = [[5, 9, 14, 3], [7, 7, 2, 40, 41]]
    free = make_engine("cache=none", "runner.overlap=false").generate(prompts, SamplingParams(max_new_tokens=24, ignore_eos=True))
    first = free[0].token_ids
    stop_at = next(k for k in range(4, 24) if first[k] not in first[:k])
    engine = make_engine("cache=radix", "runner.overlap=true")
    params = [SamplingParams(max_new_tokens=24, ignore_eos=True, stop_token_ids=[first[stop_at]]), SamplingParams(max_new_tokens=24, ignore_eos=True)]
    reqs = [engine.add_request(p, q) for p, q in zip(prompts, params)]
    while not reqs[0].is_finished:
        assert engine.step()
    # The step that sampled the stop token had already launched the next one with it.
    assert engine.core.in_flight is not None and reqs[0] in engine.core.in_flight.scheduled.requests
    ahead = engine.core.stats.ahead_steps
    assert engine.step() == [reqs[1]]
    # Its row of that step was dropped, and the other request went on ahead without it.
    assert engine.core.stats.ahead_steps == ahead + 1 and engine.core.in_flight.scheduled.requests == [reqs[1]]
    while engine.core.has_work():
        assert reqs[0] not in engine.step()
    assert reqs[0].output_ids == first[: stop_at + 1] and reqs[0].finish_reason == "stop"
    assert reqs[1].output_ids == free[1].token_ids
    pool, cache = engine.built.pool, engine.built.cache
    assert pool.num_free_slots == pool.num_slots - cache.num_cached_tokens()


def test_abort_while_a_step_is_in_flight_keeps_only_the_tokens_already_read(make_engine):
    engine = make_engine("cache=radix", "runner.overlap=true")
    reqs = [engine.add_request([5, 9, 14, 3], SamplingParams(max_new_tokens=30, ignore_eos=True))]
    while len(reqs[0].output_ids) < 5:
        engine.step()
    assert engine.core.in_flight is not None
    read = list(reqs[0].output_ids)
    engine.core.abort(reqs[0].rid)
    assert engine.step() == [] and not engine.core.has_work()
    assert reqs[0].output_ids == read and reqs[0].finish_reason == "abort"
    pool, cache = engine.built.pool, engine.built.cache
    assert pool.num_free_slots == pool.num_slots - cache.num_cached_tokens()


def fresh_run(make_engine: Callable[..., Engine], overlap: str, prompt: list[int], params: SamplingParams) -> Engine:
    """One request on an engine built just now, so the global generator starts from the config's seed."""
    engine = make_engine("cache=radix", f"runner.overlap={overlap}")
    engine.generate([prompt], params)
    return engine


@pytest.mark.parametrize("seed", [None, 7])
def test_a_sampled_batch_of_one_launches_every_decode_step_after_the_first_ahead(make_engine, seed):
    prompt = [5, 9, 14, 3]
    params = SamplingParams(max_new_tokens=64, ignore_eos=True, temperature=1.0, top_k=40, top_p=0.9, seed=seed)
    on, off = (fresh_run(make_engine, o, prompt, params) for o in ("true", "false"))
    sampled = on.core.requests[0].output_ids
    assert sampled == off.core.requests[0].output_ids
    assert on.core.stats.ahead_steps == 64 - 1 and off.core.stats.ahead_steps == 0
    greedy = make_engine("cache=radix").generate([prompt], SamplingParams(max_new_tokens=64, ignore_eos=True))[0].token_ids
    assert sampled != greedy


@pytest.mark.parametrize(
    "held_back",
    [
        SamplingParams(max_new_tokens=24, ignore_eos=True, temperature=0.8, logprobs=2),
        SamplingParams(max_new_tokens=24, ignore_eos=True, logprobs=0),
        SamplingParams(max_new_tokens=24, temperature=0.8, regex="[a-z ]{200,300}"),
        SamplingParams(max_new_tokens=24, regex="[a-z ]{200,300}"),
    ],
    ids=["sampled-logprobs", "greedy-logprobs", "sampled-constrained", "greedy-constrained"],
)
def test_constrained_and_logprobs_requests_never_go_ahead(make_engine, held_back):
    engine = make_engine("cache=radix", "runner.overlap=true", "constraint.jump_forward=false")
    plain = SamplingParams(max_new_tokens=24, ignore_eos=True, temperature=0.8)
    outs = engine.generate([[5, 9, 14, 3], [7, 7, 2, 40]], [held_back, plain])
    assert [len(o.token_ids) for o in outs] == [24, 24]
    assert engine.core.stats.ahead_steps == 0
