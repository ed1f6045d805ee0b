"""The expert-distribution recorder's modes agree with the routes returned to the requests they served."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.errors import RequestError

PARAMS = SamplingParams(max_new_tokens=5, ignore_eos=True, return_routed_experts=True)


@pytest.fixture(scope="module")
def olmoe(checkpoint_factory) -> Path:
    return checkpoint_factory("tiny-olmoe")


def make_engine(path: Path, *overrides: str) -> Engine:
    return Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", "cache=none", *overrides])


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(1, min(vocab, 2000), (n,), generator=g).tolist() for n in (6, 11, 4)]


def bincount(routes: torch.Tensor, num_experts: int) -> torch.Tensor:
    """[L, E] counts of routes [tokens, L, k]."""
    return torch.stack([torch.bincount(routes[:, layer].flatten(), minlength=num_experts) for layer in range(routes.shape[1])])


def test_per_token_dump_equals_returned_routes(olmoe: Path, tmp_path: Path) -> None:
    engine = make_engine(olmoe, "runner.routes=true")
    recorder = engine.core.distribution
    engine.generate([[1, 2, 3]], PARAMS)  # before the recording: not in it
    recorder.start("per_token")
    outs = engine.generate(prompts(engine.spec.vocab_size), PARAMS)
    recorder.stop()
    engine.generate([[4, 5, 6]], PARAMS)  # after it: not in it either
    dump = recorder.dump(tmp_path)
    assert Path(dump["path"]).is_file()
    dumped = {entry["request_id"]: entry for entry in dump["requests"]}
    assert sorted(dumped) == sorted(o.request_id for o in outs)
    for out in outs:
        entry = dumped[out.request_id]
        assert entry["positions"] == list(range(out.routed_experts.shape[0]))
        assert torch.equal(torch.tensor(entry["routed_experts"], dtype=torch.int32), out.routed_experts)


def test_per_pass_counts_and_batch_composition(olmoe: Path) -> None:
    engine = make_engine(olmoe, "runner.routes=true")
    recorder = engine.core.distribution
    recorder.start("per_pass")
    asked = prompts(engine.spec.vocab_size)
    outs = engine.generate(asked, PARAMS)
    passes = recorder.dump()["passes"]
    num_experts = engine.spec.moe.num_experts
    routes = torch.cat([o.routed_experts for o in outs]).long()
    assert torch.equal(sum(torch.tensor(p["counts"]) for p in passes), bincount(routes, num_experts))
    assert sum(p["tokens"] for p in passes) == routes.shape[0]
    assert sum(p["prefill_tokens"] for p in passes) == sum(len(p) for p in asked)
    assert passes[0]["kind"] == "prefill" and passes[0]["requests"] == 3
    assert passes[-1]["kind"] == "decode" and all(p["decode_tokens"] == p["tokens"] for p in passes[1:])


@pytest.mark.parametrize("routes", ["true", "false"], ids=["from_routes", "from_load_totals"])
def test_stat_counts_served_tokens_only(olmoe: Path, routes: str) -> None:
    engine = make_engine(olmoe, "runner.routes=true")
    counted = make_engine(olmoe, f"runner.routes={routes}")
    recorder = counted.core.distribution
    asked = prompts(engine.spec.vocab_size)
    recorder.start("stat")
    counted.generate(asked, SamplingParams(max_new_tokens=5, ignore_eos=True))
    counted.score([1, 2, 3, 4, 5, 6, 7])  # a scoring pass is counted apart
    recorder.stop()
    counted.generate([[9, 9, 9]], SamplingParams(max_new_tokens=3))  # after the recording
    routes_of = torch.cat([o.routed_experts for o in engine.generate(asked, PARAMS)]).long()
    assert torch.equal(torch.tensor(recorder.dump()["counts"]), bincount(routes_of, engine.spec.moe.num_experts))
    apart = counted.stats()["expert_load"]["counted_apart"]["scoring"]
    assert apart["tokens"] == 7 * sum(engine.spec.sparse_layers)


def test_modes_that_read_routes_need_runner_routes(olmoe: Path) -> None:
    recorder = make_engine(olmoe).core.distribution
    with pytest.raises(RequestError, match="runner.routes=true"):
        recorder.start("per_token")
    with pytest.raises(RequestError, match="valid choices"):
        recorder.start("everything")
    recorder.start("stat")  # counted by the expert-load recorder, without routes
    recorder.stop()
    with pytest.raises(RequestError, match="no expert-distribution recording"):
        recorder.stop()
