"""ExpertLoadRecorder: counts, balance statistics, reset and heatmap on hand-made plans."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from moeframe.routers.plan import RoutingPlan
from moeframe.telemetry.expert_load import ExpertLoadRecorder


def plan(ids: list[list[int]]) -> RoutingPlan:
    topk_ids = torch.tensor(ids)
    return RoutingPlan(topk_ids, (topk_ids >= 0).float())


def test_counts_kept_assignments_per_layer_and_expert_and_dropped_apart():
    recorder = ExpertLoadRecorder(num_layers=2, num_experts=3)
    recorder.record(1, plan([[0, 2], [0, -1]]))
    recorder.record(1, plan([[2, -1]]))
    assert recorder.load_counts().tolist() == [[0, 0, 0], [2, 0, 2]]
    assert recorder.dropped_counts().tolist() == [0, 2]


def test_with_the_model_k_unchosen_expert_choice_columns_are_not_drops():
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=3, top_k=1)
    # an expert-choice plan: 3 tokens, E columns, capacity 1 per expert; token 1 got nothing
    recorder.record(0, plan([[0, 1, -1], [-1, -1, -1], [-1, -1, 2]]))
    layer = recorder.stats()["layers"][0]
    assert (layer["kept"], layer["dropped"], layer["drop_rate"]) == (3, 0, 0.0)
    assert layer["unrouted_rate"] == pytest.approx(1 / 3)


def test_with_the_model_k_drops_are_assignments_short_of_t_times_k():
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=3, top_k=2)
    recorder.record(0, plan([[0, -1], [1, 2], [-1, -1]]))
    layer = recorder.stats()["layers"][0]
    assert (layer["kept"], layer["dropped"]) == (3, 3)
    assert layer["unrouted_rate"] == pytest.approx(1 / 3)


def test_stats_of_a_skewed_layer():
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=4)
    recorder.record(0, plan([[0], [0], [0], [1], [-1]]))  # loads 3, 1, 0, 0; one dropped
    layer = recorder.stats()["layers"][0]
    mean = 1.0
    std = math.sqrt(((3 - mean) ** 2 + 0 + 1 + 1) / 4)
    entropy = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert layer["layer"] == 0 and layer["kept"] == 4 and layer["dropped"] == 1
    assert layer["drop_rate"] == pytest.approx(1 / 5)
    assert layer["max_mean_load"] == pytest.approx(3.0)
    assert layer["cv"] == pytest.approx(std / mean)
    assert layer["entropy"] == pytest.approx(entropy)
    assert layer["entropy_norm"] == pytest.approx(entropy / math.log(4))


def test_a_perfectly_balanced_layer_scores_one_zero_one():
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=4)
    recorder.record(0, plan([[0, 1], [2, 3], [1, 0], [3, 2]]))
    layer = recorder.stats()["layers"][0]
    assert (layer["max_mean_load"], layer["cv"], layer["drop_rate"]) == (1.0, 0.0, 0.0)
    assert layer["entropy_norm"] == pytest.approx(1.0)


def test_totals_sum_over_layers_and_keep_the_worst_imbalance():
    recorder = ExpertLoadRecorder(num_layers=3, num_experts=2)
    recorder.record(0, plan([[0], [1]]))
    recorder.record(2, plan([[0], [0], [-1], [-1]]))
    stats = recorder.stats()
    assert [layer["layer"] for layer in stats["layers"]] == [0, 2]  # layer 1 saw nothing
    total = stats["total"]
    assert (total["kept"], total["dropped"]) == (4, 2)
    assert total["drop_rate"] == pytest.approx(2 / 6)
    assert total["max_mean_load"] == pytest.approx(2.0)
    assert total["mean_cv"] == pytest.approx((0.0 + 1.0) / 2)


def test_reset_forgets_everything():
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=2)
    recorder.record(0, plan([[0], [-1]]))
    recorder.reset()
    assert recorder.load_counts().tolist() == [[0, 0]]
    assert recorder.stats() == {"layers": [], "total": {"kept": 0, "dropped": 0, "drop_rate": 0.0, "unrouted_rate": 0.0,
                                                        "experts_per_token": 0.0, "max_mean_load": 0.0, "mean_cv": 0.0,
                                                        "mean_entropy_norm": 0.0}, "counted_apart": {}}


def test_heatmap_is_a_png_image(tmp_path):
    recorder = ExpertLoadRecorder(num_layers=4, num_experts=8)
    for layer in range(4):
        recorder.record(layer, plan([[layer, (layer + 1) % 8]] * 5))
    path = recorder.heatmap_png(tmp_path / "expert_load.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100


def test_a_narrower_router_than_the_model_drops_nothing() -> None:
    from moeframe.routers.plan import RoutingPlan
    from moeframe.telemetry.expert_load import ExpertLoadRecorder

    recorder = ExpertLoadRecorder(num_layers=1, num_experts=4, top_k=2)
    plan = RoutingPlan(topk_ids=torch.tensor([[0], [3], [3]]), topk_weights=torch.ones(3, 1))
    recorder.record(0, plan)
    layer = recorder.stats()["layers"][0]
    assert layer["dropped"] == 0 and layer["kept"] == 3


def test_set_aside_moves_counts_apart_in_place():
    """Warm-up counts move apart, and the counters stay the same tensors (captured CUDA graphs add into them)."""
    recorder = ExpertLoadRecorder(num_layers=1, num_experts=2)
    recorder.record(0, plan([[0], [1], [1]]))
    counters = recorder.counts
    recorder.set_aside("warmup")
    assert recorder.counts is counters and recorder.load_counts().tolist() == [[0, 0]]
    recorder.record(0, plan([[1]]))
    assert recorder.load_counts().tolist() == [[0, 1]]
    assert recorder.stats()["counted_apart"] == {"warmup": {"kept": 3, "tokens": 3}}
