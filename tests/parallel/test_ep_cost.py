"""The EP cost model on cases small enough to work out by hand."""

from __future__ import annotations

import pytest
import torch

from moeframe.parallel.ep_cost import Hardware, MoEShape, estimate

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
