"""The decode split kernel with the qkv prologue fused in against the prologue launch followed by the split kernel.

Both paths run the same operations with the same roundings, so under the
interpreter their outputs and the cache rows they write are equal bit for
bit. The cache rows the step writes start as noise, so a fused kernel that
read the newest key back from the cache instead of its registers would differ.
A split takes at least one tile of SPLIT_TILE_KEYS (16) keys: with 4 splits a
context of 300 keys gives the last split 75 keys, its newest in its fifth
tile; one split over 130 keys (tiles of 64 then) holds the newest in its third.

The steps are built on the CPU, for the interpreter, where the bits are the
same; compiled for a GPU the two kernels may contract their products
differently, and tests/gpu/test_cuda_engine.py compares the two paths' tokens.
"""

from __future__ import annotations

import pytest
import torch
from kernel_inputs import random_kv_batch

import moeframe.attention as attention
from moeframe.attention import QKVPrologue, attend_reference, attend_with_prologue, get_attention_backend
from moeframe.attention import set_decode_attention_prologue
from moeframe.errors import ConfigError

NUM_SLOTS = 700

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="bit-equality under Triton's interpreter (CPU runs)")


def make_step(kv_lens, num_q_heads, num_kv_heads, head_dim, rotary_dim, norm, clip, interleave, dtype, seed):
    """Raw q/k/v (column views of one qkv projection), a prologue, a noisy KV pool and a decode batch, on the CPU."""
    gen = torch.Generator().manual_seed(seed)
    n = len(kv_lens)
    widths = [num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = (3 * torch.randn(n, sum(widths), generator=gen)).to(dtype)
    q, k, v = qkv.split(widths, dim=-1)
    weight_dims = {"none": None, "per_head": (head_dim, head_dim), "full": (widths[0], widths[1])}[norm]
    weights = [None, None] if weight_dims is None else [(torch.rand(d, generator=gen) + 0.5).to(dtype) for d in weight_dims]
    angles = torch.rand(n, rotary_dim // 2, generator=gen) * 6.0
    prologue = QKVPrologue(
        q_norm_weight=weights[0], k_norm_weight=weights[1], norm=norm, eps=1e-5, clip=clip,
        cos=angles.cos().to(dtype), sin=angles.sin().to(dtype), interleave=interleave,
    )  # fmt: skip
    k_cache = torch.randn(NUM_SLOTS, num_kv_heads, head_dim, generator=gen).to(dtype)
    v_cache = torch.randn(NUM_SLOTS, num_kv_heads, head_dim, generator=gen).to(dtype)
    batch = random_kv_batch([1] * n, kv_lens, NUM_SLOTS, "cpu", gen)
    return q, k, v, prologue, k_cache, v_cache, batch


def assert_fused_equals_separate(
    kv_lens=(1, 37, 130), num_q_heads=4, num_kv_heads=2, head_dim=16, rotary_dim=16, norm="full", clip=None,
    interleave=False, dtype=torch.float32, splits=4, fused_merge=True, seed=0,
):  # fmt: skip
    from moeframe.attention.triton_decode import decode_attention, decode_attention_prologue

    q, k, v, prologue, k_cache, v_cache, batch = make_step(
        list(kv_lens), num_q_heads, num_kv_heads, head_dim, rotary_dim, norm, clip, interleave, dtype, seed
    )
    k_noise = k_cache.clone()
    k_sep, v_sep = k_cache.clone(), v_cache.clone()
    scale = head_dim**-0.5
    q_sep = prologue.apply(q, k, v, k_sep, v_sep, batch.out_slots)
    separate = decode_attention(q_sep, k_sep, v_sep, batch, scale, num_kv_splits=splits, fused_merge=fused_merge)
    fused = decode_attention_prologue(q, k, v, prologue, k_cache, v_cache, batch, scale, splits, fused_merge)
    assert torch.equal(fused, separate)
    assert torch.equal(k_cache, k_sep)
    assert torch.equal(v_cache, v_sep)
    assert not torch.equal(k_cache[batch.out_slots], k_noise[batch.out_slots])


@pytest.mark.parametrize("norm", ["none", "per_head", "full"])
@pytest.mark.parametrize("clip", [None, 1.5])
def test_fused_prologue_equals_the_separate_launches_for_each_norm_and_clip(norm, clip):
    assert_fused_equals_separate(norm=norm, clip=clip, seed=len(norm) + int(clip is None))


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_fused_prologue_equals_the_separate_launches_for_full_and_partial_rotary(interleave, rotary_dim):
    assert_fused_equals_separate(rotary_dim=rotary_dim, interleave=interleave, norm="per_head", clip=2.0, seed=rotary_dim)


def test_fused_prologue_equals_the_separate_launches_when_pass_through_dims_fill_part_of_a_tile():
    # 32-dim heads rotating 24: rotary halves of 12 in 16-wide tiles, 8 pass-through dims.
    assert_fused_equals_separate(head_dim=32, rotary_dim=24, interleave=True, norm="full", clip=2.0, seed=7)


@pytest.mark.parametrize("norm", ["per_head", "full"])
def test_fused_prologue_equals_the_separate_launches_in_float16(norm):
    assert_fused_equals_separate(norm=norm, clip=4.0, rotary_dim=8, interleave=True, dtype=torch.float16, seed=5)


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(2, 2), (6, 2), (8, 1)])
@pytest.mark.parametrize("norm", ["per_head", "full"])
def test_fused_prologue_equals_the_separate_launches_for_grouped_query_heads(num_q_heads, num_kv_heads, norm):
    assert_fused_equals_separate(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, norm=norm, seed=num_q_heads)


@pytest.mark.parametrize("kv_lens", [(1,), (2,), (300, 1, 65), (64, 129, 300, 3)])
def test_fused_prologue_equals_the_separate_launches_across_split_boundaries(kv_lens):
    assert_fused_equals_separate(kv_lens=kv_lens, norm="full", clip=2.0, seed=len(kv_lens))


@pytest.mark.parametrize("splits", [1, 8])
@pytest.mark.parametrize("fused_merge", [True, False])
def test_fused_prologue_equals_the_separate_launches_for_one_or_many_splits_and_either_merge(splits, fused_merge):
    assert_fused_equals_separate(kv_lens=(130, 1, 90), splits=splits, fused_merge=fused_merge, norm="full", seed=splits)


def test_the_fused_prologue_writes_only_the_steps_cache_rows():
    from moeframe.attention.triton_decode import decode_attention_prologue

    q, k, v, prologue, k_cache, v_cache, batch = make_step([5, 70], 4, 2, 16, 16, "full", None, False, torch.float32, 3)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    decode_attention_prologue(q, k, v, prologue, k_cache, v_cache, batch, 0.25, 4)
    others = torch.ones(NUM_SLOTS, dtype=torch.bool)
    others[batch.out_slots] = False
    assert torch.equal(k_cache[others], k_before[others])
    assert torch.equal(v_cache[others], v_before[others])


def test_a_backend_without_fusion_runs_the_prologue_then_attends():
    q, k, v, prologue, k_cache, v_cache, batch = make_step([3, 9], 4, 2, 16, 16, "per_head", 2.0, False, torch.float32, 4)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    expected = attend_reference(prologue.apply(q, k, v, k_ref, v_ref, batch.out_slots), k_ref, v_ref, batch, 0.25)
    got = attend_with_prologue(attend_reference, q, k, v, prologue, k_cache, v_cache, batch, 0.25)
    assert torch.equal(got, expected)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)


@pytest.mark.parametrize("mode", ["fused", "separate"])
def test_the_prologue_switch_reaches_the_triton_backend(monkeypatch, mode):
    """Each mode gives what the separate launches give (bitwise) and takes its own path."""
    import moeframe.attention.triton_decode as triton_decode

    monkeypatch.setattr(attention, "_decode_fused_prologue", False)
    calls = []
    real = triton_decode.decode_attention_prologue
    monkeypatch.setattr(triton_decode, "decode_attention_prologue", lambda *a: calls.append(1) or real(*a))
    set_decode_attention_prologue(mode)
    q, k, v, prologue, k_cache, v_cache, batch = make_step([4, 70], 4, 2, 16, 16, "full", None, False, torch.float32, 6)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    backend = get_attention_backend("triton", "cpu")
    expected = backend(prologue.apply(q, k, v, k_ref, v_ref, batch.out_slots), k_ref, v_ref, batch, 0.25)
    got = attend_with_prologue(backend, q, k, v, prologue, k_cache, v_cache, batch, 0.25)
    assert torch.equal(got, expected) and torch.equal(k_cache, k_ref)
    assert len(calls) == (mode == "fused")


def test_an_unknown_prologue_mode_lists_the_valid_choices():
    with pytest.raises(ConfigError, match="decode_attention_prologue: unknown choice 'inline'; valid choices: fused, separate"):
        set_decode_attention_prologue("inline")


def test_a_prologue_with_an_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        QKVPrologue(None, None, "layer", 1e-6, None, torch.zeros(1, 8), torch.zeros(1, 8), False)


def test_the_forward_context_runs_a_layers_prologue_on_its_own_caches(monkeypatch):
    from moeframe.model.layers.context import ForwardContext

    monkeypatch.setattr(attention, "_decode_fused_prologue", True)
    q, k, v, prologue, k_cache, v_cache, batch = make_step([6, 1], 4, 2, 16, 16, "full", 2.0, True, torch.float32, 8)
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    expected = attend_reference(prologue.apply(q, k, v, k_ref, v_ref, batch.out_slots), k_ref, v_ref, batch, 0.25)
    other_k, other_v, noise = k_cache.clone(), v_cache.clone(), k_cache.clone()
    ctx = ForwardContext(batch, [other_k, k_cache], [other_v, v_cache], get_attention_backend("triton", "cpu"))
    got = ctx.attend_prologue(q, k, v, prologue, layer_idx=1, scale=0.25)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(k_cache, k_ref) and torch.equal(v_cache, v_ref)
    assert torch.equal(other_k, noise)  # layer 0's cache is not the one written
