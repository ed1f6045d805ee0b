"""The EP cost model and its pipeline extension on cases small enough to work out by hand."""

from __future__ import annotations

import pytest
import torch

from moeframe.parallel.ep_cost import Hardware, MoEShape, estimate
from moeframe.parallel.pp_cost import estimate_pipeline, fill_drain

SHAPE = MoEShape(hidden_size=1000, expert_intermediate=500, top_k=1, num_sparse_layers=3, bytes_per_value=2)


def test_two_gpus_in_one_node_with_uniform_load() -> None:
    hw = Hardware(gpus_per_node=8, nvlink_gbps=100.0, network_gbps=10.0, tflops=1.0, hbm_gbps=1e9)
    out = estimate(torch.tensor([[5, 5]]), SHAPE, world_size=2, tokens=4000, hw=hw)
    # each GPU sends half of its 2000 tokens' rows (2 KB each) to the other, then gets them back
    sent_one_way = 1000 * 2000
    assert out["all_to_all_gb"] == pytest.approx(3 * 2 * 2 * sent_one_way / 1e9)
    assert out["all_to_all_ms"] == pytest.approx(3 * 2 * sent_one_way / 100e9 * 1e3)
    assert out["expert_ms"] == pytest.approx(3 * 6 * 1000 * 500 * 2000 / 1e12 * 1e3)
    assert out["imbalance"] == 1.0


def test_crossing_nodes_uses_the_network_bandwidth() -> None:
    hw = Hardware(gpus_per_node=1, nvlink_gbps=100.0, network_gbps=10.0, tflops=1e9, hbm_gbps=1e9)
    out = estimate(torch.tensor([[5, 5]]), SHAPE, world_size=2, tokens=4000, hw=hw)
    assert out["nodes"] == 2
    assert out["all_to_all_ms"] == pytest.approx(3 * 2 * 1000 * 2000 / 10e9 * 1e3)


def test_skewed_load_raises_imbalance_and_expert_time_and_replicas_lower_them() -> None:
    hw = Hardware(tflops=1.0, hbm_gbps=1e9)
    counts = torch.tensor([[30, 10, 10, 10]])
    plain = estimate(counts, SHAPE, world_size=2, tokens=6000, hw=hw)
    assert plain["imbalance"] == pytest.approx(40 / 30)
    replicated = estimate(counts, SHAPE, world_size=2, tokens=6000, hw=hw, redundant=1)
    assert replicated["imbalance"] < plain["imbalance"] and replicated["expert_ms"] < plain["expert_ms"]


def test_fill_drain_of_equal_stages_takes_m_plus_s_minus_1_slots() -> None:
    assert fill_drain([1.0, 1.0, 1.0], [0.0, 0.0], micro_batches=4) == pytest.approx(4 + 3 - 1)
    assert fill_drain([1.0], [], micro_batches=4) == pytest.approx(4)


def test_fill_drain_waits_for_the_slowest_stage_and_the_sends() -> None:
    # one micro-batch: the stages and the send in a row
    assert fill_drain([1.0, 2.0], [0.5], micro_batches=1) == pytest.approx(3.5)
    # the slow second stage sets the pace once filled: 1 + 0.5 (fill), then 3 x 2
    assert fill_drain([1.0, 2.0], [0.5], micro_batches=3) == pytest.approx(1.5 + 3 * 2.0)


def test_one_stage_one_micro_batch_is_the_expert_parallel_estimate() -> None:
    hw = Hardware(tflops=1.0, hbm_gbps=1e9)
    counts = torch.tensor([[30, 10, 10, 10]])
    ep = estimate(counts, SHAPE, world_size=2, tokens=6000, hw=hw)
    pp = estimate_pipeline(counts, SHAPE, stages=1, ep_size=2, tokens=6000, micro_batches=1, hw=hw)
    assert pp["moe_step_ms"] == pytest.approx(ep["moe_step_ms"]) and pp["bubble_share"] == pytest.approx(0.0)


def test_pipeline_bubble_shrinks_with_micro_batches_when_compute_bound() -> None:
    hw = Hardware(tflops=1.0, hbm_gbps=1e9, nvlink_gbps=1e9)  # time follows FLOPs: splitting tokens costs nothing
    counts = torch.tensor([[5, 5]])
    shape = MoEShape(hidden_size=1000, expert_intermediate=500, top_k=1, num_sparse_layers=4)
    one = estimate_pipeline(counts, shape, stages=2, ep_size=1, tokens=4000, micro_batches=1, hw=hw)
    four = estimate_pipeline(counts, shape, stages=2, ep_size=1, tokens=4000, micro_batches=4, hw=hw)
    assert one["bubble_share"] == pytest.approx(1 / 2, rel=1e-6)
    assert four["bubble_share"] == pytest.approx(1 / 5, rel=1e-6)  # (S-1)/(M+S-1)
    assert four["moe_step_ms"] == pytest.approx(one["moe_step_ms"] * 5 / 8, rel=1e-6)


def test_pipeline_micro_batches_reread_weights_when_memory_bound() -> None:
    hw = Hardware(tflops=1e9, hbm_gbps=1.0)  # time follows weight reads: each micro-batch reads them again
    counts = torch.tensor([[5, 5]])
    shape = MoEShape(hidden_size=1000, expert_intermediate=500, top_k=1, num_sparse_layers=4)
    one = estimate_pipeline(counts, shape, stages=2, ep_size=1, tokens=8, micro_batches=1, hw=hw)
    four = estimate_pipeline(counts, shape, stages=2, ep_size=1, tokens=8, micro_batches=4, hw=hw)
    assert four["moe_step_ms"] == pytest.approx(one["moe_step_ms"] * 5 / 2, rel=1e-3)
