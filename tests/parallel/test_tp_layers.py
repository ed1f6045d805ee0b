"""Tensor-parallel shards summed by hand equal the whole layer (no process group: a world of one per shard)."""

from __future__ import annotations

import copy

import torch

from moeframe.model.layers.mlp import GatedMLP
from moeframe.model.layers.norm import RMSNorm
from moeframe.parallel.comm import Comm
from moeframe.parallel.slicing import WeightSlicer
from moeframe.parallel.tp_layers import ShardedRMSNorm, local_heads, shard_gated_mlp, shard_range


def test_shard_range_covers_size_in_order_with_uneven_blocks() -> None:
    assert [shard_range(10, 4, r) for r in range(4)] == [(0, 3), (3, 6), (6, 8), (8, 10)]


def test_fewer_kv_heads_than_ranks_are_shared_by_consecutive_ranks() -> None:
    assert [list(local_heads(2, 4, r)) for r in range(4)] == [[0], [0], [1], [1]]
    assert [list(local_heads(8, 4, r)) for r in range(4)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_gated_mlp_shards_sum_to_the_whole_mlp_for_uneven_widths() -> None:
    torch.manual_seed(0)
    mlp = GatedMLP(16, 37, bias=True)
    x = torch.randn(5, 16)
    world = 3
    partial = []
    for rank in range(world):
        shard = copy.deepcopy(mlp)
        shard_gated_mlp(shard, world, rank, Comm())  # no reduce: sum by hand below
        shard.down_proj.bias = None
        partial.append(shard(x))
    torch.testing.assert_close(sum(partial) + mlp.down_proj.bias, mlp(x))


class SumOfShards(Comm):
    """Stands in for an all-reduce by returning a precomputed total."""

    def __init__(self, total: torch.Tensor) -> None:
        super().__init__()
        self.total = total

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.total


def test_sharded_rms_norm_with_summed_squares_equals_full_norm() -> None:
    torch.manual_seed(0)
    norm = RMSNorm(12, 1e-6)
    norm.weight.data = torch.randn(12)
    x = torch.randn(4, 12)
    total = x.pow(2).sum(-1, keepdim=True)
    cols = torch.arange(4, 8)
    shard = ShardedRMSNorm(norm, cols, full_dim=12, replicas=1, comm=SumOfShards(total))
    torch.testing.assert_close(shard(x[:, cols]), norm(x)[:, cols])


def test_slicer_recorded_on_the_meta_model_cuts_full_tensors_like_sharding_them() -> None:
    torch.manual_seed(0)
    full = GatedMLP(8, 10)
    with torch.device("meta"):
        meta = GatedMLP(8, 10)
    shard_gated_mlp(meta, 3, 1, Comm())
    slicer = WeightSlicer.of(meta)
    real = copy.deepcopy(full)
    shard_gated_mlp(real, 3, 1, Comm())
    for name, param in real.named_parameters():
        torch.testing.assert_close(slicer(name, full.state_dict()[name]), param.data)
        assert tuple(dict(meta.named_parameters())[name].shape) == tuple(param.shape)
