"""The two-launch greedy argmax (moeframe/engine/greedy.py) against torch.argmax, ties and NaN included."""

from __future__ import annotations

import pytest
import torch

from moeframe.engine.greedy import argmax_rows, triton_argmax_rows


@pytest.mark.parametrize("rows,vocab,chunk", [(1, 1, 64), (1, 50, 64), (3, 1000, 64), (2, 4096, 1024), (5, 513, 128)])
def test_argmax_equals_torch_on_random_logits(rows: int, vocab: int, chunk: int, device: torch.device) -> None:
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(vocab)).to(device)
    assert torch.equal(triton_argmax_rows(logits, chunk).cpu(), logits.argmax(-1).cpu())


def test_ties_go_to_the_lowest_index_across_chunks(device: torch.device) -> None:
    logits = torch.zeros(3, 300)
    logits[0, [5, 70, 299]] = 2.0  # three chunks of 64 hold the max
    logits[1, [200, 64]] = 1.0
    logits[2, :] = 7.0
    logits = logits.to(device)
    assert triton_argmax_rows(logits, 64).cpu().tolist() == [5, 64, 0]


def test_nan_ranks_above_every_number_like_torch(device: torch.device) -> None:
    logits = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    logits[0, 150] = float("nan")
    logits[0, 3] = float("inf")
    logits[1, [90, 20]] = float("nan")
    logits = logits.to(device)
    got = triton_argmax_rows(logits, 64).cpu()
    assert got.tolist()[:2] == [150, 20]
    assert torch.equal(got, logits.argmax(-1).cpu())


def test_rows_of_minus_infinity_give_index_zero(device: torch.device) -> None:
    logits = torch.full((2, 130), float("-inf"))
    logits[1, 129] = -1e30
    logits = logits.to(device)
    assert triton_argmax_rows(logits, 64).cpu().tolist() == [0, 129] == logits.argmax(-1).cpu().tolist()


def test_strided_rows_and_half_precision(device: torch.device, low_precision: torch.dtype) -> None:
    wide = torch.randn(4, 600, generator=torch.Generator().manual_seed(1)).to(device, low_precision)
    logits = wide[:, :500]
    assert torch.equal(triton_argmax_rows(logits, 128).cpu(), logits.float().argmax(-1).cpu())


def test_the_cpu_takes_torch() -> None:
    logits = torch.randn(2, 10)
    assert torch.equal(argmax_rows(logits), logits.argmax(-1))


def test_out_takes_the_answer_in_place(device: torch.device) -> None:
    """The CUDA graphs write their greedy ids into the token-id input: a view of a larger int64 buffer."""
    logits = torch.randn(3, 700, generator=torch.Generator().manual_seed(2)).to(device)
    buffer = torch.full((8,), -5, dtype=torch.int64, device=device)
    got = triton_argmax_rows(logits, 128, out=buffer[:3])
    assert got.data_ptr() == buffer.data_ptr()
    assert buffer.cpu().tolist() == [*logits.argmax(-1).cpu().tolist(), -5, -5, -5, -5, -5]
    with pytest.raises(ValueError, match="contiguous int64"):
        triton_argmax_rows(logits, 128, out=buffer[:6:2].view(3))
    with pytest.raises(ValueError, match="contiguous int64"):
        triton_argmax_rows(logits, 128, out=torch.empty(3, dtype=torch.int32, device=device))
    cpu_out = torch.empty(3, dtype=torch.int64)
    assert argmax_rows(logits.cpu(), out=cpu_out) is cpu_out and torch.equal(cpu_out, logits.cpu().argmax(-1))
