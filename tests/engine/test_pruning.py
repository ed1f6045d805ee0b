"""Expert pruning: calibration scores on hand-made plans, the kept set, and a pruned engine's weights and routing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from moeframe import Engine, SamplingParams
from moeframe.engine.pruning import CalibrationMeter, keep_best
from moeframe.errors import ConfigError
from moeframe.experts import EXPERTS
from moeframe.routers import RoutingPlan


def test_calibration_meter_counts_tokens_and_averages_router_weight_times_output_norm():
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(3, 4, generator=generator)
    w13, w2 = torch.randn(3, 6, 4, generator=generator), torch.randn(3, 4, 3, generator=generator)
    plan = RoutingPlan(torch.tensor([[0, 2], [2, -1], [0, 2]]), torch.tensor([[0.7, 0.3], [1.0, 0.0], [0.4, 0.6]]))
    meter = CalibrationMeter(EXPERTS.build({"name": "reference"}), 3)
    out = meter.forward(hidden, w13, w2, plan)

    def norm(token: int, expert: int) -> float:
        gate, up = F.linear(hidden[token], w13[expert]).chunk(2)
        return float(F.linear(F.silu(gate) * up, w2[expert]).norm())

    assert meter.scores("frequency").tolist() == [2.0, 0.0, 3.0]
    reap = meter.scores("reap")
    torch.testing.assert_close(reap[0].item(), (0.7 * norm(0, 0) + 0.4 * norm(2, 0)) / 2)
    assert reap[1].item() == 0.0
    torch.testing.assert_close(reap[2].item(), (0.3 * norm(0, 2) + 1.0 * norm(1, 2) + 0.6 * norm(2, 2)) / 3)
    assert torch.equal(out, EXPERTS.build({"name": "reference"}).forward(hidden, w13, w2, plan))


def test_keep_best_takes_the_highest_scores_and_breaks_ties_by_lower_id():
    scores = torch.tensor([1.0, 5.0, 3.0, 5.0, 0.0], dtype=torch.float64)
    assert keep_best(scores, 3).tolist() == [1, 2, 3]
    assert keep_best(torch.zeros(4, dtype=torch.float64), 2).tolist() == [0, 1]


@pytest.fixture(scope="module")
def engine_of(checkpoint_factory):
    path = checkpoint_factory("tiny-olmoe")
    return lambda *overrides: Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", *overrides])


@pytest.mark.parametrize("method", ["frequency", "reap"])
def test_a_pruned_engine_holds_and_routes_to_the_kept_experts_only(engine_of, method):
    full = engine_of()
    num_experts = full.spec.moe.num_experts
    pruned = engine_of("routing.prune_experts=4", f"routing.prune_by={method}", "routing.calibration_tokens=300")
    assert pruned.stats()["expert_weight_bytes"] * num_experts == full.stats()["expert_weight_bytes"] * 4
    out = pruned.generate(["a b c", "hello there"], SamplingParams(max_new_tokens=4, ignore_eos=True))
    assert all(len(o.token_ids) == 4 for o in out)
    stats = pruned.stats()
    counts = torch.tensor(stats["expert_load"]["counts"])
    assert counts.sum() > 0
    for layer, kept in stats["kept_experts"].items():
        assert len(kept) == 4 and kept == sorted(kept)
        pruned_away = [e for e in range(num_experts) if e not in kept]
        assert counts[layer, pruned_away].sum() == 0  # routed among the kept only; calibration's forwards not counted


def test_pruning_to_every_expert_changes_nothing(engine_of):
    ids = list(range(1, 40))
    full, kept_all = engine_of(), engine_of("routing.prune_experts=16", "routing.calibration_tokens=64")
    assert full.spec.moe.num_experts == 16
    assert torch.equal(kept_all.score(ids), full.score(ids))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [(["routing.prune_experts=0"], "1..16"), (["routing.prune_experts=1"], "top_k"),
     (["routing.prune_experts=4", "routing.prune_by=magnitude"], "prune_by"),
     (["routing.prune_experts=4", "router=hash"], "ignores")],
)
def test_bad_pruning_is_refused_at_build(engine_of, overrides, message):
    with pytest.raises(ConfigError, match=message):
        engine_of(*overrides)
