"""Does folding the input RMSNorm into the qkv GEMV pay, and do the PDL GEMVs beat cuBLAS, in a decode-shaped chain?

Replays 16 OLMoE-1B-7B-shaped layers (residual add + RMSNorm, qkv 6144 x 2048,
o 2048 x 2048; o's output is the next layer's block output, the first 2048 qkv
features its input) from one CUDA graph, bf16, three ways:

- cublas: add_rms_norm (Inductor, norm.py) + F.linear twice: the step before this change
- gemv: add_rms_norm + small_gemv.gemv twice (Triton, PDL)
- fused: small_gemv.norm_gemv + gemv: one launch for the norm and qkv

    python benchmarks/kernels_h100/gemv_experiment/norm_gemv_chain.py
"""

import json

import torch
import torch.nn.functional as F

from moeframe.model.layers.norm import add_rms_norm
from moeframe.model.layers.small_gemv import gemv, norm_gemv

HIDDEN, QKV, LAYERS, EPS = 2048, 6144, 16, 1e-5


def make_layers(num_layers: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    def weight(n: int, k: int) -> torch.Tensor:
        return torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5

    def norm() -> torch.Tensor:
        return 1 + 0.1 * torch.randn(HIDDEN, device="cuda", dtype=torch.bfloat16)

    return [(norm(), weight(QKV, HIDDEN), weight(HIDDEN, HIDDEN)) for _ in range(num_layers)]


def chain(mode: str, h: torch.Tensor, residual: torch.Tensor, layers) -> torch.Tensor:
    for norm_weight, w_qkv, w_o in layers:
        if mode == "fused":
            qkv, residual = norm_gemv(h, residual, norm_weight, EPS, w_qkv)
        else:
            x, residual = add_rms_norm(h, residual, norm_weight, EPS)
            qkv = F.linear(x, w_qkv) if mode == "cublas" else gemv(x, w_qkv)
        attn = qkv[:, :HIDDEN]
        h = F.linear(attn, w_o) if mode == "cublas" else gemv(attn, w_o)
    return h + residual


def time_graph(fn, iters: int = 100) -> tuple[float, torch.Tensor]:
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        fn()
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    for _ in range(5):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters * 1000, out.clone()


def main() -> None:
    layers = make_layers(LAYERS)
    results = []
    for num_tokens in (1, 4, 8):
        h = torch.randn(num_tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
        residual = 4 * torch.randn(num_tokens, HIDDEN, device="cuda", dtype=torch.bfloat16)
        outs = {}
        for mode in ("cublas", "gemv", "fused"):
            us, outs[mode] = time_graph(lambda: chain(mode, h, residual, layers))
            results.append(dict(tokens=num_tokens, mode=mode, us=round(us, 1), us_per_layer=round(us / LAYERS, 2)))
            print(results[-1], flush=True)
        for mode in ("gemv", "fused"):
            err = ((outs[mode].float() - outs["cublas"].float()).norm() / outs["cublas"].float().norm()).item()
            print(f"T={num_tokens} {mode} vs cublas: rel err {err:.1e}")
    print(json.dumps(dict(device=torch.cuda.get_device_name(), torch=torch.__version__, results=results)))


if __name__ == "__main__":
    main()
