"""runner.l2_prefetch: the L2 hints of the decode GEMVs (moeframe/gpu/l2_prefetch.py), inert off CUDA."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from sm90_compile import compile_for_sm90

from moeframe import Engine
from moeframe.api import compose_config
from moeframe.gpu import l2_prefetch
from moeframe.gpu._l2_prefetch_jit import share_of_lines
from moeframe.model.layers.attention import Attention


@triton.jit
def _shares_kernel(bounds_ptr, num_bytes):
    part = tl.program_id(0)
    lo, hi = share_of_lines(num_bytes, part, tl.num_programs(0))
    tl.store(bounds_ptr + 2 * part, lo)
    tl.store(bounds_ptr + 2 * part + 1, hi)


@pytest.mark.parametrize(("num_bytes", "parts"), [(25_165_824, 256), (1000, 7), (128, 3), (129, 2), (50_000_000, 132)])
def test_the_parts_prefetch_every_line_of_the_range_once(num_bytes: int, parts: int, device: torch.device) -> None:
    bounds = torch.zeros(parts, 2, dtype=torch.int32, device=device)
    _shares_kernel[(parts,)](bounds, num_bytes)
    covered = torch.cat([torch.arange(int(lo), int(hi)) for lo, hi in bounds.cpu()])
    assert torch.equal(covered, torch.arange(-(-num_bytes // 128)))


def test_the_hints_stay_off_on_the_cpu_and_under_the_interpreter() -> None:
    try:
        l2_prefetch.set_l2_prefetch(True)
        assert not l2_prefetch.l2_hints(torch.zeros(1))
        assert l2_prefetch.weight_eviction(torch.zeros(1)) == ""
    finally:
        l2_prefetch.set_l2_prefetch(False)


def test_each_attention_layer_prefetches_the_next_layers_qkv_weight_and_the_last_the_first_layers() -> None:
    cfg = compose_config(["model=tiny-olmoe", "model.random_weights=true", "device=cpu", "dtype=float32"])
    layers = Engine(cfg).built.model.layers
    assert len(layers) > 1 and all(isinstance(layer.self_attn, Attention) for layer in layers)
    targets = [layer.self_attn._l2_prefetch_target() for layer in layers]
    following = [*layers[1:], layers[0]]
    assert all(t is after.self_attn.qkv_proj.weight for t, after in zip(targets, following, strict=True))


# The expert GEMVs as the JIT specializes OLMoE's batch-1 launches with the hints on: every weight load of the
# tile (and no other load) carries the evict-first policy.
EXPERT_KERNELS_FOR_SM90 = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.experts._down_prefetch_kernel import down_prefetch_kernel
from moeframe.experts._gate_up_gemv_kernel import gate_up_gemv_kernel
for kernel, consts, warps in ((gate_up_gemv_kernel, dict(BLOCK_N=8, BLOCK_K=2048), 16), (down_prefetch_kernel, dict(BLOCK_N=16, BLOCK_K=1024), 8)):
    consts |= dict(WEIGHT_EVICT="evict_first", USE_PDL=True)
    sig = {n: "constexpr" if n in consts else "*bf16" if n.endswith("_ptr") else "i32" for n in kernel.arg_names}
    sig["topk_ids_ptr"] = "*i32"
    aligned = [i for i, n in enumerate(kernel.arg_names) if n.endswith("_ptr") or n in ("hidden", "inter") or n.startswith("stride")]
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts, attrs={(i,): [["tt.divisibility", 16]] for i in aligned})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": True, "num_warps": warps}).asm["ptx"]
    loads = [line for line in ptx.splitlines() if "ld.global" in line]
    wide = [line for line in loads if ".v4" in line]
    print(len(loads), len(wide), sum("evict_first" in line for line in loads))
"""


def test_the_expert_gemvs_stream_their_weights_evict_first() -> None:
    gate_up, down = ([int(n) for n in line.split()] for line in compile_for_sm90(EXPERT_KERNELS_FOR_SM90).splitlines())
    # gate/up: 8 + 8 rows x 2048 over 512 threads, eight 16-byte loads each; down: 16 x 1024 over 256 threads, eight
    # each; those and only those evict first (not the expert id, the token or act row, the routing weight)
    for loads, weight_loads, evict_first in (gate_up, down):
        assert weight_loads == evict_first == 8 and loads > weight_loads
