"""Does programmatic dependent launch (PDL) pay for a decode step's chain of GEMVs?

A batch-1 decode layer is a chain of memory-bound GEMVs and tiny kernels, each
waiting for the previous one. With PDL (sm_90+, Triton's launch_pdl and
gdc_wait), the next kernel's CTAs start while the previous kernel drains and can
load their weights, which do not depend on it, before waiting. This script
replays 16 layer-shaped chains (qkv 6144x2048, a 1-CTA kernel, o 2048x2048,
a 1-CTA kernel, gate/up 16384x2048, down 2048x8192) from one CUDA graph with
Triton GEMVs without PDL, with PDL waiting first, and with PDL loading the first
weight tile before the wait; and cuBLAS (torch.mv) for reference.

    python benchmarks/kernels_h100/pdl_experiment/pdl_chain.py
"""

import json
import sys

import torch
import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:
    print("no gdc in this triton", triton.__version__)
    sys.exit(1)


@triton.jit
def gemv_kernel(x_ptr, w_ptr, y_ptr, N, K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                USE_PDL: tl.constexpr, PREFETCH: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rows[:, None] * K + cols[None, :]
    mask = rows[:, None] < N
    if PREFETCH:
        w = tl.load(w_ptrs, mask=mask, other=0.0)
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()
    if not PREFETCH:
        w = tl.load(w_ptrs, mask=mask, other=0.0)
    x = tl.load(x_ptr + cols)
    acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
    for k in range(BLOCK_K, K, BLOCK_K):
        w = tl.load(w_ptrs + k, mask=mask, other=0.0)
        x = tl.load(x_ptr + k + cols)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
    tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty), mask=rows < N)


@triton.jit
def small_kernel(x_ptr, y_ptr, N: tl.constexpr, USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()
    offs = tl.arange(0, N)
    x = tl.load(x_ptr + offs).to(tl.float32)
    y = x * tl.rsqrt(tl.sum(x * x) / N + 1e-6)
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty))


SHAPES = [(6144, 2048), "small", (2048, 2048), "small", (16384, 2048), (2048, 8192)]


def build(layers: int):
    ops, bytes_ = [], 0
    prev = torch.randn(16384, device="cuda", dtype=torch.bfloat16)
    for _ in range(layers):
        for shape in SHAPES:
            if shape == "small":
                out = torch.empty(2048, device="cuda", dtype=torch.bfloat16)
                ops.append(("small", prev, None, out))
            else:
                n, k = shape
                w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.01
                out = torch.empty(max(n, 16384), device="cuda", dtype=torch.bfloat16)
                ops.append(("gemv", prev, w, out))
                bytes_ += w.numel() * 2
            prev = out
    return ops, bytes_


def run_chain(ops, mode: str, block_n: int, block_k: int, warps: int):
    for kind, x, w, out in ops:
        pdl = mode != "plain"
        if kind == "small":
            if mode == "cublas":
                torch.rms_norm(x[:2048].float(), (2048,), eps=1e-6)
            else:
                small_kernel[(1,)](x, out, N=2048, USE_PDL=pdl, launch_pdl=pdl, num_warps=4)
        elif mode == "cublas":
            torch.mv(w, x[: w.shape[1]], out=out[: w.shape[0]])
        else:
            n, k = w.shape
            gemv_kernel[(triton.cdiv(n, block_n),)](
                x, w, out, n, K=k, BLOCK_N=block_n, BLOCK_K=block_k, USE_PDL=pdl, PREFETCH=mode == "pdl_prefetch",
                launch_pdl=pdl, num_warps=warps,
            )


def time_graph(fn, iters: int = 50) -> float:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    for _ in range(5):
        graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1000


def main() -> None:
    ops, nbytes = build(16)
    results = []
    for block_n, block_k, warps in [(16, 256, 4), (32, 256, 4), (32, 128, 4), (64, 128, 8)]:
        for mode in ["plain", "pdl_wait_first", "pdl_prefetch"]:
            us = time_graph(lambda: run_chain(ops, mode, block_n, block_k, warps))
            results.append(dict(mode=mode, block_n=block_n, block_k=block_k, warps=warps, us=us, tbps=nbytes / us / 1e6))
            print(results[-1], flush=True)
    us = time_graph(lambda: run_chain(ops, "cublas", 0, 0, 0))
    results.append(dict(mode="cublas", us=us, tbps=nbytes / us / 1e6))
    print(results[-1])
    print(json.dumps(dict(device=torch.cuda.get_device_name(), triton=triton.__version__, torch=torch.__version__,
                          weight_bytes=nbytes, results=results)))


if __name__ == "__main__":
    main()
