"""prepare_qkv (one Triton launch) against the torch sequence of Attention.forward."""

from __future__ import annotations

import pytest
import torch
from sm90_compile import compile_for_sm90

from moeframe.attention.batch import ForwardBatch
from moeframe.attention.qkv_prologue import prepare_qkv
from moeframe.model.layers.attention import Attention, qkv_widths
from moeframe.model.layers.context import ForwardContext
from moeframe.model.layers.norm import rms_norm
from moeframe.model.layers.rotary import Rotary, rotate
from moeframe.model.spec import AttentionSpec, RopeSpec

NUM_SLOTS = 40


def rotate_partial(x, cos, sin, interleave):
    rot = 2 * cos.shape[-1]
    return torch.cat([rotate(x[..., :rot], cos, sin, interleave), x[..., rot:]], dim=-1)


def torch_prologue(q, k, v, q_weight, k_weight, norm, eps, clip, cos, sin, interleave, k_cache, v_cache, out_slots):
    """Attention.forward's torch code path, in its order: full norm, clip, per-head norm, rotary, cache write."""
    n, num_kv_heads, head_dim = q.shape[0], k_cache.shape[1], k_cache.shape[2]
    if norm == "full":
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    if clip is not None:
        q, k, v = (t.clamp(-clip, clip) for t in (q, k, v))
    q = q.reshape(n, -1, head_dim)
    k = k.reshape(n, num_kv_heads, head_dim)
    v = v.reshape(n, num_kv_heads, -1)
    if norm == "per_head":
        q, k = rms_norm(q, q_weight, eps), rms_norm(k, k_weight, eps)
    q, k = rotate_partial(q, cos, sin, interleave), rotate_partial(k, cos, sin, interleave)
    k_cache[out_slots] = k.to(k_cache.dtype)
    v_cache[out_slots] = v.to(v_cache.dtype)
    return q


def make_inputs(n, num_q_heads, num_kv_heads, head_dim, rotary_dim, norm, dtype, device, seed):
    """q, k, v as column views of one fused [N, (Hq + 2 Hkv) * D] projection output, and everything the prologue reads."""
    gen = torch.Generator().manual_seed(seed)
    widths = [num_q_heads * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim]
    qkv = (3 * torch.randn(n, sum(widths), generator=gen)).to(dtype).to(device)
    q, k, v = qkv.split(widths, dim=-1)
    weight_dims = {"none": (1, 1), "per_head": (head_dim, head_dim), "full": (widths[0], widths[1])}[norm]
    q_weight, k_weight = ((torch.rand(d, generator=gen) + 0.5).to(dtype).to(device) for d in weight_dims)
    angles = torch.rand(n, rotary_dim // 2, generator=gen) * 6.0
    cos, sin = angles.cos().to(dtype).to(device), angles.sin().to(dtype).to(device)
    k_cache = torch.randn(NUM_SLOTS, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    v_cache = torch.randn(NUM_SLOTS, num_kv_heads, head_dim, generator=gen).to(dtype).to(device)
    out_slots = torch.randperm(NUM_SLOTS, generator=gen)[:n].to(device)
    return q, k, v, q_weight, k_weight, cos, sin, k_cache, v_cache, out_slots


def run_both(n=7, num_q_heads=4, num_kv_heads=2, head_dim=16, rotary_dim=16, norm="none", clip=None, interleave=False,
             dtype=torch.float32, device="cpu", seed=0):  # fmt: skip
    q, k, v, qw, kw, cos, sin, k_cache, v_cache, slots = make_inputs(
        n, num_q_heads, num_kv_heads, head_dim, rotary_dim, norm, dtype, device, seed
    )
    assert q.stride(0) > q.shape[1]
    eps = 1e-5
    k_ref, v_ref = k_cache.clone(), v_cache.clone()
    q_ref = torch_prologue(q, k, v, qw, kw, norm, eps, clip, cos, sin, interleave, k_ref, v_ref, slots)
    q_out = prepare_qkv(
        q, k, v, q_norm_weight=qw, k_norm_weight=kw, norm=norm, eps=eps, clip=clip, cos=cos, sin=sin,
        interleave=interleave, k_cache=k_cache, v_cache=v_cache, out_slots=slots,
    )  # fmt: skip
    return (q_out, k_cache, v_cache), (q_ref, k_ref, v_ref)


def assert_matches(got, expected, dtype, device):
    # A few ulps: the kernel keeps float32 between the points where torch materialises a tensor.
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 4e-3, "rtol": 2e-3}
    if device.type == "cuda" and dtype != torch.float32:
        tol = {"atol": 3e-2, "rtol": 2e-2}
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.float(), b.float(), **tol)


@pytest.mark.parametrize("norm", ["none", "per_head", "full"])
@pytest.mark.parametrize("clip", [None, 2.5])
def test_prologue_matches_torch_for_each_norm_with_and_without_clip(device, norm, clip):
    got, expected = run_both(norm=norm, clip=clip, device=device, seed=len(norm) + int(clip is None))
    assert_matches(got, expected, torch.float32, device)


@pytest.mark.parametrize("interleave", [False, True])
@pytest.mark.parametrize("rotary_dim", [16, 8])
def test_prologue_matches_torch_for_full_and_partial_rotary_dims(device, interleave, rotary_dim):
    got, expected = run_both(rotary_dim=rotary_dim, interleave=interleave, norm="per_head", device=device, seed=rotary_dim)
    assert_matches(got, expected, torch.float32, device)


@pytest.mark.parametrize("norm", ["per_head", "full"])
def test_prologue_matches_torch_in_low_precision(device, low_precision, norm):
    got, expected = run_both(norm=norm, clip=4.0, rotary_dim=12, interleave=True, dtype=low_precision, device=device, seed=5)
    assert_matches(got, expected, low_precision, device)


@pytest.mark.parametrize("num_q_heads,num_kv_heads", [(1, 1), (6, 2), (8, 1)])
def test_prologue_matches_torch_for_grouped_query_heads(device, num_q_heads, num_kv_heads):
    got, expected = run_both(num_q_heads=num_q_heads, num_kv_heads=num_kv_heads, norm="full", device=device, seed=num_q_heads)
    assert_matches(got, expected, torch.float32, device)


def test_prologue_matches_torch_for_one_decode_token(device):
    got, expected = run_both(n=1, num_q_heads=16, num_kv_heads=4, head_dim=32, rotary_dim=32, norm="per_head", device=device)
    assert_matches(got, expected, torch.float32, device)


def test_prologue_splits_many_heads_over_programs(device):
    # 200 heads of 16 dims exceed one program's head block: the q heads span several programs.
    got, expected = run_both(n=2, num_q_heads=200, num_kv_heads=40, norm="per_head", clip=3.0, device=device)
    assert_matches(got, expected, torch.float32, device)


def test_prologue_leaves_other_slots_untouched(device):
    q, k, v, qw, kw, cos, sin, k_cache, v_cache, slots = make_inputs(7, 4, 2, 16, 16, "none", torch.float32, device, 9)
    k_before, v_before = k_cache.clone(), v_cache.clone()
    prepare_qkv(
        q, k, v, q_norm_weight=None, k_norm_weight=None, norm="none", eps=1e-6, clip=None, cos=cos, sin=sin,
        interleave=False, k_cache=k_cache, v_cache=v_cache, out_slots=slots,
    )  # fmt: skip
    others = torch.ones(NUM_SLOTS, dtype=torch.bool, device=device)
    others[slots] = False
    assert torch.equal(k_cache[others], k_before[others])
    assert torch.equal(v_cache[others], v_before[others])
    assert not torch.equal(v_cache[slots], v_before[slots])


def test_prologue_casts_to_the_cache_dtype(device, low_precision):
    q, k, v, qw, kw, cos, sin, k_cache, v_cache, slots = make_inputs(3, 2, 2, 16, 16, "none", torch.float32, device, 2)
    k_ref, v_ref = k_cache.to(low_precision), v_cache.to(low_precision)
    k_low, v_low = k_ref.clone(), v_ref.clone()
    torch_prologue(q, k, v, qw, kw, "none", 1e-6, None, cos, sin, False, k_ref, v_ref, slots)
    prepare_qkv(
        q, k, v, q_norm_weight=None, k_norm_weight=None, norm="none", eps=1e-6, clip=None, cos=cos, sin=sin,
        interleave=False, k_cache=k_low, v_cache=v_low, out_slots=slots,
    )  # fmt: skip
    torch.testing.assert_close(k_low.float(), k_ref.float(), atol=2e-3, rtol=2e-3)
    assert torch.equal(v_low, v_ref)


def test_prologue_rejects_an_unknown_norm(device):
    q, k, v, qw, kw, cos, sin, k_cache, v_cache, slots = make_inputs(1, 2, 2, 16, 16, "none", torch.float32, device, 0)
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        prepare_qkv(
            q, k, v, q_norm_weight=None, k_norm_weight=None, norm="layer", eps=1e-6, clip=None, cos=cos, sin=sin,
            interleave=False, k_cache=k_cache, v_cache=v_cache, out_slots=slots,
        )  # fmt: skip


@pytest.mark.parametrize("qk_norm", ["per_head", "full"])
def test_prologue_matches_an_attention_layers_cpu_path(device, qk_norm):
    """The layer itself runs the torch sequence on the CPU; the kernel must reproduce what it hands to attention."""
    gen = torch.Generator().manual_seed(3)
    spec = AttentionSpec(num_heads=4, num_kv_heads=2, head_dim=16, qk_norm=qk_norm, clip_qkv=1.5)
    rotary = Rotary(RopeSpec(theta=1e4, rotary_dim=16))
    attn = Attention(spec, hidden_size=32, eps=1e-5, rotary=rotary, layer_idx=0)
    with torch.no_grad():
        for p in attn.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    batch = ForwardBatch.build([[0] * 5], [list(range(10, 18))], "cpu")
    x = torch.randn(5, 32, generator=gen)
    k_ref, v_ref = torch.zeros(20, 2, 16), torch.zeros(20, 2, 16)
    seen = {}

    def attend(q, k_cache, v_cache, batch, scale):
        seen["q"] = q
        return torch.zeros(q.shape[0], q.shape[1], v_cache.shape[-1])

    with torch.no_grad():
        attn(x, batch.positions, ForwardContext(batch, [k_ref], [v_ref], attend))
        q_width, kv_width = qkv_widths(spec)
        q, k, v = attn.qkv_proj(x).to(device).split([q_width, kv_width, kv_width], dim=-1)
        cos, sin = rotary.cos_sin(batch.positions.to(device), q.dtype)
        k_cache, v_cache = torch.zeros(20, 2, 16, device=device), torch.zeros(20, 2, 16, device=device)
        q_out = prepare_qkv(
            q, k, v, q_norm_weight=attn.q_norm.weight.to(device), k_norm_weight=attn.k_norm.weight.to(device), norm=qk_norm, eps=1e-5,
            clip=1.5, cos=cos, sin=sin, interleave=False, k_cache=k_cache, v_cache=v_cache,
            out_slots=batch.out_slots.to(device),
        )  # fmt: skip
    expected = tuple(t.to(device) for t in (seen["q"], k_ref, v_ref))
    assert_matches((q_out, k_cache, v_cache), expected, torch.float32, device)


COMPILE_FOR_SM90 = """
import re
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.attention._qkv_prologue_kernels import qkv_prologue_kernel as kernel
def arg_type(name):
    if name.endswith("_ptr"):
        return "*i64" if name == "slots_ptr" else "*bf16"
    return "constexpr" if name.isupper() else "fp32" if name in ("eps", "clip") else "i32"
norm = sys.argv[1]
constexprs = dict(FULL_NORM=norm == "full", HEAD_NORM=norm == "per_head", HAS_CLIP=False, INTERLEAVE=False,
                  BLOCK_HQ=16, BLOCK_HK=16, BLOCK_R=64, BLOCK_P=1, BLOCK_DV=128, USE_PDL=True)
src = ASTSource(fn=kernel, signature={n: arg_type(n) for n in kernel.arg_names}, constexprs=constexprs)
ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": 4}).asm["ptx"]
events = []
for op in re.findall(r"(ld\\.global|st\\.global|griddepcontrol\\.wait)", ptx):
    if not events or events[-1] != op:
        events.append(op)
print(" ".join(e.split(".")[0] if e != "griddepcontrol.wait" else "wait" for e in events))
"""


@pytest.mark.parametrize("norm", ["full", "per_head"])
def test_the_norm_weights_load_before_the_pdl_wait_and_the_activations_after(norm):
    events = compile_for_sm90(COMPILE_FOR_SM90, norm).split()
    assert events[:3] == ["ld", "wait", "ld"], events
    assert events.count("wait") == 1
