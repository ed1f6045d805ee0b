"""Where a pipeline cuts: layers per stage balanced by parameter bytes, and a step's requests per micro-batch.

Stages get contiguous layer ranges whose largest weight total is as small as
it can be (the linear-partition problem, solved exactly by dynamic
programming), counting the embedding on the first stage and the final norm
and LM head on the last, as Megatron-LM and torchtitan account them when
they split a model by layers. Weights are counted from the spec; every
tensor of a model is kept in one dtype (the router gate's float32 copy is
too small to matter), so counts stand for bytes.

A step's requests are cut into micro-batches of consecutive requests with
about equal numbers of new tokens (GPipe, Huang et al., 2019): a stage's
time per micro-batch follows its tokens.
"""

from __future__ import annotations

import bisect
import itertools

from moeframe.model.spec import AttentionSpec, ModelSpec


def attention_parameters(att: AttentionSpec, hidden: int) -> int:
    if att.mla is not None:
        mla = att.mla
        qk_dim = mla.qk_nope_head_dim + mla.qk_rope_head_dim
        if mla.q_lora_rank is None:
            q = hidden * att.num_heads * qk_dim
        else:
            q = (hidden + 1 + att.qkv_bias) * mla.q_lora_rank + mla.q_lora_rank * att.num_heads * qk_dim
        kv_a = (hidden + att.qkv_bias) * (mla.kv_lora_rank + mla.qk_rope_head_dim) + mla.kv_lora_rank
        kv_b = mla.kv_lora_rank * att.num_heads * (mla.qk_nope_head_dim + mla.v_head_dim)
        return q + kv_a + kv_b + (att.num_heads * mla.v_head_dim + att.out_bias) * hidden
    q_out, kv_out = att.num_heads * att.head_dim, att.num_kv_heads * att.head_dim
    qkv = (hidden + att.qkv_bias) * (q_out + 2 * kv_out)
    norms = {"none": 0, "per_head": 2 * att.head_dim, "full": q_out + kv_out}[att.qk_norm]
    return qkv + (q_out + att.out_bias) * hidden + norms


def layer_parameters(spec: ModelSpec, layer_idx: int) -> int:
    """Parameters of decoder layer ``layer_idx``: its attention, MLP or MoE block, and two norms."""
    hidden = spec.hidden_size
    total = attention_parameters(spec.attention, hidden) + 2 * hidden
    if spec.is_moe and spec.sparse_layers[layer_idx]:
        moe = spec.moe
        total += hidden * moe.num_experts + 3 * moe.num_experts * hidden * moe.intermediate_size
        total += 3 * hidden * moe.shared_intermediate_size + (hidden if moe.shared_expert_gate else 0)
    else:
        total += 3 * hidden * spec.intermediate_size + (2 * spec.intermediate_size + hidden if spec.mlp_bias else 0)
    return total


def model_parameters(spec: ModelSpec) -> int:
    """Every parameter of the model: its layers, the embedding, the final norm and (untied) the LM head."""
    table = spec.vocab_size * spec.hidden_size
    layers = sum(layer_parameters(spec, i) for i in range(spec.num_layers))
    return layers + table + spec.hidden_size + (0 if spec.tie_word_embeddings else table)


def stage_costs(spec: ModelSpec, bounds: list[tuple[int, int]]) -> list[int]:
    """Parameters each stage holds: its layers, plus the embedding on the first and the norm and head on the last."""
    layers = [layer_parameters(spec, i) for i in range(spec.num_layers)]
    table = spec.vocab_size * spec.hidden_size
    costs = [sum(layers[lo:hi]) for lo, hi in bounds]
    costs[0] += table
    costs[-1] += spec.hidden_size + table
    return costs


def balanced_split(weights: list[int], num_stages: int, first_extra: int = 0, last_extra: int = 0) -> list[int]:
    """Layers per stage (each >= 1, contiguous) minimising the heaviest stage.

    ``first_extra`` / ``last_extra``: weight the first / last stage holds besides its layers.
    """
    n = len(weights)
    if not 1 <= num_stages <= n:
        raise ValueError(f"{num_stages} stages need between 1 and {n} layers each")
    prefix = [0, *itertools.accumulate(weights)]
    inf = float("inf")
    # best[s][i]: the lightest heaviest-stage of layers [0, i) cut into s stages; cut[s][i]: where its last stage starts
    best = [[inf] * (n + 1) for _ in range(num_stages + 1)]
    cut = [[0] * (n + 1) for _ in range(num_stages + 1)]
    best[0][0] = 0
    for s in range(1, num_stages + 1):
        for i in range(s, n - (num_stages - s) + 1):
            for j in range(s - 1, i):
                stage = prefix[i] - prefix[j] + (first_extra if s == 1 else 0) + (last_extra if s == num_stages else 0)
                cost = max(best[s - 1][j], stage)
                if cost < best[s][i]:
                    best[s][i], cut[s][i] = cost, j
    sizes, end = [], n
    for s in range(num_stages, 0, -1):
        start = cut[s][end]
        sizes.append(end - start)
        end = start
    return sizes[::-1]


def split_bounds(sizes: list[int]) -> list[tuple[int, int]]:
    ends = list(itertools.accumulate(sizes))
    return [(end - size, end) for size, end in zip(sizes, ends)]


def micro_batch_bounds(q_lens: list[int], num_micro_batches: int) -> list[tuple[int, int]]:
    """Consecutive request ranges [lo, hi), at most ``num_micro_batches`` and each non-empty, of about equal tokens.

    Micro-batch j ends at the first request where the running token count
    reaches j/M of the total, kept strictly after the last cut and early
    enough to leave every later micro-batch a request.
    """
    count = min(num_micro_batches, len(q_lens))
    prefix = list(itertools.accumulate(q_lens))
    total = prefix[-1]
    ends = []
    for j in range(1, count):
        end = bisect.bisect_left(prefix, total * j / count) + 1
        low = ends[-1] + 1 if ends else 1
        ends.append(min(max(end, low), len(q_lens) - (count - j)))
    starts = [0, *ends]
    return list(zip(starts, [*ends, len(q_lens)]))
