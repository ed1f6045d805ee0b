"""runner.gemv_tail_prefetch: a prefetching GEMV's first wave prefetches its second wave's rows (gpu/occupancy.py)."""

from __future__ import annotations

import pytest
import torch

from moeframe.gpu import l2_prefetch
from moeframe.gpu.occupancy import programs_per_sm
from moeframe.model.layers import small_gemv
from moeframe.model.layers.small_gemv import MAX_TAIL_PREFETCH_BYTES, _tail_rows, prefetch_gemv, prefetch_tile_rows


@pytest.mark.parametrize(
    ("n_regs", "num_warps", "shared", "expected"),
    [
        (96, 4, 0, 5),  # registers: 21 warps of 3,072
        (58, 16, 0, 2),  # 58 -> 64 a thread: 32 warps
        (255, 1, 0, 8),  # 256 a thread: 8 warps
        (16, 1, 0, 32),  # the block limit
        (32, 8, 0, 8),  # the thread limit: 2,048 / 256
        (32, 4, 100 * 1024, 2),  # shared memory: 228 KB / 100 KB
    ],
)
def test_programs_per_sm_follow_the_occupancy_rules(n_regs, num_warps, shared, expected) -> None:
    assert programs_per_sm(n_regs, num_warps, shared) == expected


def test_a_tail_is_prefetched_only_past_one_wave_and_within_the_byte_bound() -> None:
    weight = torch.empty(0, dtype=torch.bfloat16)
    assert not _tail_rows(6144, 8, 2048, weight, first_wave=768)  # the grid fits one wave
    assert _tail_rows(6144, 8, 2048, weight, first_wave=660)  # OLMoE's qkv on an H100: 864 rows, 3.5 MB
    rows_in_bound = MAX_TAIL_PREFETCH_BYTES // (2048 * 2)
    assert _tail_rows(8 + rows_in_bound, 8, 2048, weight, first_wave=1)
    assert not _tail_rows(9 + rows_in_bound, 8, 2048, weight, first_wave=1)  # the lm_head's many waves


def test_the_switch_is_inert_on_the_cpu() -> None:
    try:
        l2_prefetch.set_gemv_tail_prefetch(True)
        assert not l2_prefetch.tail_prefetch(torch.zeros(1))
    finally:
        l2_prefetch.set_gemv_tail_prefetch(False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_a_gemv_past_one_wave_prefetching_its_tail_gives_the_same_bits() -> None:
    k = 2048
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, k, generator=generator).to("cuda", torch.bfloat16)
    probe = torch.randn(64, k, generator=generator).to("cuda", torch.bfloat16)
    prefetch_gemv(x, probe)  # learns the first wave of this launch configuration
    block_n = prefetch_tile_rows(k, torch.bfloat16)
    first_wave = small_gemv._first_waves[(x.device, torch.bfloat16, block_n, k, False, False)]
    assert first_wave is not None and first_wave > 0
    weight = torch.randn(first_wave * block_n + 1000, k, generator=generator).to("cuda", torch.bfloat16)
    plain = prefetch_gemv(x, weight)
    try:
        l2_prefetch.set_gemv_tail_prefetch(True)
        tails = [prefetch_gemv(x, weight) for _ in range(3)]  # the first launch of the prefetching variant learns its wave
    finally:
        l2_prefetch.set_gemv_tail_prefetch(False)
    assert all(torch.equal(t, plain) for t in tails)
    torch.testing.assert_close(plain.float(), x.float() @ weight.float().T, rtol=2e-2, atol=2e-2)
