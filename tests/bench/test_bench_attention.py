"""Triton attention over KV slots at the OLMoE-1B-7B shape (16 heads of 128, bf16)."""

from __future__ import annotations

import pytest
import torch

from moeframe.attention.batch import ForwardBatch
from moeframe.attention.triton_decode import decode_attention
from moeframe.attention.triton_extend import extend_attention

HEADS, DIM = 16, 128


def pool_and_batch(q_lens: list[int], kv_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor, ForwardBatch]:
    num_slots = sum(kv_lens) + 64
    slots = torch.randperm(num_slots).tolist()
    contexts, used = [], 0
    for n in kv_lens:
        contexts.append(slots[used : used + n])
        used += n
    k = torch.randn(num_slots, HEADS, DIM, device="cuda").bfloat16()
    v = torch.randn(num_slots, HEADS, DIM, device="cuda").bfloat16()
    return k, v, ForwardBatch.build([[0] * q for q in q_lens], contexts, "cuda")


@pytest.mark.parametrize("batch_size", [1, 32, 128])
def test_bench_decode_attention(benchmark, replay_graph, batch_size):
    k, v, batch = pool_and_batch([1] * batch_size, [1024] * batch_size)
    q = torch.randn(batch_size, HEADS, DIM, device="cuda").bfloat16()
    benchmark(replay_graph(lambda: decode_attention(q, k, v, batch, DIM**-0.5)))
    benchmark.extra_info["kv_gb_per_s"] = 2 * batch_size * 1024 * HEADS * DIM * 2 / benchmark.stats["median"] / 1e9


def test_bench_extend_attention_prefill_8x1024(benchmark):
    k, v, batch = pool_and_batch([1024] * 8, [1024] * 8)
    q = torch.randn(batch.num_tokens, HEADS, DIM, device="cuda").bfloat16()

    def run() -> None:
        extend_attention(q, k, v, batch, DIM**-0.5)
        torch.cuda.synchronize()

    benchmark(run)
    benchmark.extra_info["tflops"] = 4 * 8 * (1024 * 1025 / 2) * HEADS * DIM / benchmark.stats["median"] / 1e12
