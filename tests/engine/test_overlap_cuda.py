"""Overlapped decode on CUDA: graph replays fed on the device, non-blocking double-buffered uploads.

The same requests decode as batches of the same sizes with overlap on and
off, so the same kernels run and the tokens must match exactly; requests of
different lengths leave the ahead step one by one (the argmax rows are
gathered on the device), and the eager path (no graphs) overlaps too.
Sampled requests go ahead as well: the sampler makes no host sync, and each
engine is built just before it runs, so both draw from the same generator.
"""

from __future__ import annotations

import pytest
import torch
from overlap_runs import Planned, drive

from moeframe import Engine, SamplingParams
from moeframe.engine.request import Request
from moeframe.engine.sampler import sample

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def engine(path, *extra: str) -> Engine:
    return Engine.from_overrides(
        [f"model.path={path}", "device=cuda", "dtype=bfloat16", "runner.cuda_graph_batch_sizes=[1,2,4,8]", "cache.max_tokens=4096", *extra]
    )


def prompts(vocab: int, count: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in (5, 17, 9, 30, 3, 12, 7, 21)[:count]]


@pytest.mark.parametrize("cuda_graph", ["true", "false"])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_overlap_gives_the_tokens_of_the_plain_loop_on_cuda(checkpoint_factory, cuda_graph: str, count: int) -> None:
    path = checkpoint_factory("tiny-olmoe")
    on = engine(path, "experts=triton", f"runner.cuda_graph={cuda_graph}", "runner.overlap=true")
    off = engine(path, "experts=triton", f"runner.cuda_graph={cuda_graph}", "runner.overlap=false")
    ids = prompts(on.spec.vocab_size, count)
    params = [SamplingParams(max_new_tokens=24 + 5 * i, ignore_eos=True) for i in range(count)]
    assert [o.token_ids for o in on.generate(ids, params)] == [o.token_ids for o in off.generate(ids, params)]
    assert on.core.stats.ahead_steps > 0 and off.core.stats.ahead_steps == 0


def test_a_stop_token_ends_an_overlapped_cuda_request_at_the_same_token(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-olmoe")
    on = engine(path, "experts=triton", "runner.overlap=true")
    prompt = prompts(on.spec.vocab_size, 1)
    free = on.generate(prompt, SamplingParams(max_new_tokens=40, ignore_eos=True))[0].token_ids
    stop_at = next(k for k in range(4, 40) if free[k] not in free[:k])
    out = on.generate(prompt, SamplingParams(max_new_tokens=40, ignore_eos=True, stop_token_ids=[free[stop_at]]))[0]
    assert out.token_ids == free[: stop_at + 1] and out.finish_reason == "stop"
    pool, cache = on.built.pool, on.built.cache
    scratch = 1 if on.built.runner.graphs is not None else 0  # the graphs' padding slot
    assert pool.num_free_slots == pool.num_slots - cache.num_cached_tokens() - scratch


def sampled_params(count: int) -> list[SamplingParams]:
    """Greedy, unseeded and seeded rows with top-k and top-p, of different lengths."""
    kinds = [{}, {"temperature": 1.0, "top_k": 40}, {"temperature": 0.7, "top_p": 0.9, "seed": 3}, {"temperature": 1.2}]
    return [SamplingParams(max_new_tokens=24 + 5 * i, ignore_eos=True, **kinds[i % len(kinds)]) for i in range(count)]


@pytest.mark.parametrize("cuda_graph", ["true", "false"])
@pytest.mark.parametrize("count", [1, 3, 8])
def test_sampled_overlap_gives_the_tokens_of_the_plain_loop_on_cuda(checkpoint_factory, cuda_graph: str, count: int) -> None:
    path = checkpoint_factory("tiny-olmoe")
    params = sampled_params(count)
    outputs, ahead = [], []
    for overlap in ("true", "false"):
        made = engine(path, "experts=triton", f"runner.cuda_graph={cuda_graph}", f"runner.overlap={overlap}")
        outputs.append([o.token_ids for o in made.generate(prompts(made.spec.vocab_size, count), params)])
        ahead.append(made.core.stats.ahead_steps)
    assert outputs[0] == outputs[1]
    assert ahead[0] > 0 and ahead[1] == 0


def test_sampling_a_mixed_batch_makes_no_host_sync() -> None:
    kinds = [{}, {"temperature": 1.0}, {"temperature": 0.8, "top_k": 5, "top_p": 0.9}, {"temperature": 0.9, "seed": 4}]
    reqs = [Request(rid=i, prompt_ids=[1], params=SamplingParams(**kind)) for i, kind in enumerate(kinds)]
    reqs[3].generator = torch.Generator().manual_seed(4)
    logits = torch.randn(len(reqs), 1000, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ids, invalid = sample(logits, reqs)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert ids.shape == (len(reqs),) and ids.device.type == "cuda"
    assert invalid.tolist() == [False] * len(reqs)


def test_arrivals_between_overlapped_graph_steps_give_the_tokens_of_eager_decode(checkpoint_factory) -> None:
    """Arrivals break the run of ahead steps: host-fed replays and ahead replays alternate over both input buffers.

    Overlap is on in both runs, so both take the same steps over the same
    batches (a request arriving while a step is in flight joins one step
    later either way); every batch size is captured, so the replays run the
    kernels eager decode runs and the tokens must match exactly. Greedy rows
    with seeded sampled ones.
    """
    path = checkpoint_factory("tiny-olmoe")
    count = 5
    kinds = [{}, {"temperature": 0.9, "top_k": 30, "seed": 5}]
    params = [SamplingParams(max_new_tokens=14 + 3 * i, ignore_eos=True, **kinds[i % 2]) for i in range(count)]
    arrivals = [0, 2, 3, 9, 10]
    outputs, ahead = [], []
    for cuda_graph in ("true", "false"):
        made = Engine.from_overrides([
            f"model.path={path}", "device=cuda", "dtype=bfloat16", "cache.max_tokens=4096", "experts=triton",
            "runner.cuda_graph_batch_sizes=[1,2,3,4,5]", f"runner.cuda_graph={cuda_graph}", "runner.overlap=true",
        ])  # fmt: skip
        plan = [Planned(p, q, at) for p, q, at in zip(prompts(made.spec.vocab_size, count), params, arrivals)]
        outputs.append([r.output_ids for r in drive(made, plan).requests])
        ahead.append(made.core.stats.ahead_steps)
    assert outputs[0] == outputs[1]
    assert ahead[0] == ahead[1] > 0


@pytest.mark.parametrize("cuda_graph", ["true", "false"])
def test_a_poisoned_row_fails_alone_beside_a_tiny_temperature_row_on_cuda(checkpoint_factory, cuda_graph: str) -> None:
    """Issue 24 on the overlapped CUDA path: a sampled row whose logits turn NaN ends with an error, and a row
    at temperature 1e-38 samples without overflow; the others run to their length (tests/engine/test_request_isolation.py
    checks the tokens exactly on the CPU, where float32 logits leave no ties at the maximum)."""
    path = checkpoint_factory("tiny-olmoe")
    made = engine(path, "experts=triton", f"runner.cuda_graph={cuda_graph}", "runner.overlap=true")
    greedy = SamplingParams(max_new_tokens=20, ignore_eos=True)
    tiny = SamplingParams(max_new_tokens=20, ignore_eos=True, temperature=1e-38, seed=1)
    victim = SamplingParams(max_new_tokens=20, ignore_eos=True, temperature=1.0, seed=9)
    run = made.built.runner.run

    def poisoned(scheduled, input_ids=None):
        out = run(scheduled, input_ids)
        for row, req in enumerate(scheduled.requests):
            if req.params is victim and len(req.output_ids) >= 3:
                out.logits[row] = float("nan")
        return out

    made.built.runner.run = poisoned
    outs = made.generate(prompts(made.spec.vocab_size, 3), [greedy, victim, tiny])
    assert made.core.stats.ahead_steps > 0
    assert outs[1].finish_reason == "error" and "not finite" in outs[1].error and len(outs[1].token_ids) == 3
    assert [(o.finish_reason, len(o.token_ids)) for o in (outs[0], outs[2])] == [("length", 20)] * 2
