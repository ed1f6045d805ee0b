"""The decode attention's merge inside the split launch (last program of each group) against its separate merge launch.

A split takes at least one tile of 16 keys (triton_decode.SPLIT_TILE_KEYS), so
with 4 splits a context of 1, 17 or 33 keys keeps 1, 2 or 3 splits busy and
64 or more all 4 (65: 17 keys a split, 300: 75): the cases cross the split
boundaries and leave some splits idle.
"""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_kv_batch

import moeframe.attention as attention
from moeframe.attention import set_decode_attention_merge
from moeframe.errors import ConfigError

NUM_SLOTS = 1200
NUM_KV_HEADS = 2


def decode_inputs(kv_lens: list[int], group: int, dtype: torch.dtype, device: torch.device, seed: int):
    gen = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(NUM_SLOTS, NUM_KV_HEADS, 32, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(NUM_SLOTS, NUM_KV_HEADS, 32, generator=gen).to(dtype).to(device)
    batch = random_kv_batch([1] * len(kv_lens), kv_lens, NUM_SLOTS, device, gen)
    q = torch.randn(len(kv_lens), NUM_KV_HEADS * group, 32, generator=gen).to(dtype).to(device)
    return q, k_cache, v_cache, batch


def both_merges(kv_lens, group, dtype, device, splits, seed=0) -> tuple[torch.Tensor, torch.Tensor]:
    from moeframe.attention.triton_decode import decode_attention

    q, k_cache, v_cache, batch = decode_inputs(kv_lens, group, dtype, device, seed)
    fused = decode_attention(q, k_cache, v_cache, batch, 32**-0.5, num_kv_splits=splits, fused_merge=True)
    separate = decode_attention(q, k_cache, v_cache, batch, 32**-0.5, num_kv_splits=splits, fused_merge=False)
    return fused, separate


def counts_after_launch(num_reqs: int, device: torch.device) -> torch.Tensor:
    from moeframe.attention.triton_decode import merge_counts

    return merge_counts(device, num_reqs * NUM_KV_HEADS)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    ("kv_lens", "group"),
    [([1], 1), ([65], 4), ([1, 17, 33, 64, 65, 129, 300], 2), ([300, 1, 200], 1), ([129, 63, 128, 33], 4)],
)
def test_fused_merge_equals_the_separate_merge_bit_for_bit(device, dtype, kv_lens, group):
    fused, separate = both_merges(kv_lens, group, dtype, device, splits=4, seed=len(kv_lens) + group)
    assert torch.equal(fused, separate)


@pytest.mark.parametrize("splits", [1, 3, 8])
def test_fused_merge_equals_the_separate_merge_for_any_split_count(device, splits):
    fused, separate = both_merges([1, 65, 300], 2, torch.float32, device, splits, seed=splits)
    assert torch.equal(fused, separate)


def test_fused_merge_leaves_its_counters_at_zero(device):
    fused, _ = both_merges([1, 130, 300], 2, torch.float32, device, splits=4)
    assert fused.isfinite().all()
    assert counts_after_launch(3, device).tolist() == [0] * (3 * NUM_KV_HEADS)


def test_repeated_fused_launches_reuse_the_counters(device):
    """The second and third launches (other contexts, same counters) merge as the separate launch does."""
    for seed, kv_lens in enumerate([[300, 129], [1, 200], [65, 64]]):
        fused, separate = both_merges(kv_lens, 4, torch.float32, device, splits=4, seed=seed)
        assert torch.equal(fused, separate)
    assert counts_after_launch(2, device).tolist() == [0] * (2 * NUM_KV_HEADS)


def test_the_merge_switch_reaches_the_triton_backend(monkeypatch):
    from moeframe.attention import triton_decode

    seen = []
    monkeypatch.setattr(triton_decode, "decode_attention", lambda *args: seen.append(args[-1]))
    q, k_cache, v_cache, batch = decode_inputs([3], 1, torch.float32, torch.device("cpu"), seed=0)
    try:
        for mode in ("separate", "fused"):
            set_decode_attention_merge(mode)
            attention.get_attention_backend("triton", "cpu")(q, k_cache, v_cache, batch, 1.0)
    finally:
        set_decode_attention_merge("fused")
    assert seen == [False, True]


def test_an_unknown_merge_mode_lists_the_valid_choices():
    with pytest.raises(ConfigError, match="decode_attention_merge.*fused, separate"):
        set_decode_attention_merge("both")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="replays a CUDA graph")
def test_fused_merge_replayed_from_a_cuda_graph_equals_the_separate_merge(device):
    """The graph holds the counters' address; each replay (contexts changed in place) finds them back at zero."""
    from moeframe.attention.triton_decode import decode_attention

    q, k_cache, v_cache, batch = decode_inputs([300, 200, 129], 2, torch.bfloat16, device, seed=5)

    def attend(fused: bool) -> torch.Tensor:
        return decode_attention(q, k_cache, v_cache, batch, 32**-0.5, num_kv_splits=4, fused_merge=fused)

    attend(True)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        replayed = attend(True)
    for kv_lens in ([1, 65, 64], [300, 200, 129], [129, 1, 300]):
        batch.kv_indptr.copy_(torch.tensor([0, *kv_lens], device=device).cumsum(0))
        graph.replay()
        assert torch.equal(replayed, attend(False))
