"""Throughput and latency figures of a set of finished requests (the names vLLM's benchmarks use)."""

from __future__ import annotations

import statistics

from moeframe.engine.request import GenerateOutput, Request


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def request_metrics(requests: list[Request], outputs: list[GenerateOutput], wall_s: float) -> dict[str, float]:
    """tokens/s, time to first token and inter-token latency (ms), cache hit rate."""
    generated = sum(len(o.token_ids) for o in outputs)
    prompt = sum(o.prompt_tokens for o in outputs)
    cached = sum(o.cached_tokens for o in outputs)
    ttfts = [o.ttft_s * 1e3 for o in outputs if o.ttft_s is not None]
    itls = [
        (b - a) * 1e3 for r in requests for a, b in zip(r.token_times_s, r.token_times_s[1:])
    ]
    return {
        "requests": len(outputs),
        "prompt_tokens": prompt,
        "generated_tokens": generated,
        "wall_s": wall_s,
        "throughput_tok_s": generated / wall_s if wall_s > 0 else 0.0,
        "total_tok_s": (generated + prompt) / wall_s if wall_s > 0 else 0.0,
        "ttft_ms_mean": statistics.fmean(ttfts) if ttfts else 0.0,
        "ttft_ms_p50": percentile(ttfts, 0.5),
        "ttft_ms_p99": percentile(ttfts, 0.99),
        "itl_ms_mean": statistics.fmean(itls) if itls else 0.0,
        "itl_ms_p99": percentile(itls, 0.99),
        "cache_hit_rate": cached / prompt if prompt else 0.0,
    }
