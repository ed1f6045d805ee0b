"""What ``deterministic=true`` costs and whether it holds on a GPU: decode speed at batch 1, 8, 32, and the invariance check.

    CUBLAS_WORKSPACE_CONFIG=:4096:8 python tools/bench_deterministic.py --out benchmarks/deterministic_h100.json

Speed: a random-weight real-shape preset (default olmoe-1b-7b, bfloat16),
generation throughput (64-token prompts, prefill included, then
``--new-tokens`` greedy tokens each) at each batch size, median of three runs, with the default engine (experts=triton, CUDA graphs) and with
``deterministic=true`` (reference experts and attention one token at a
time, eager). Invariance: workloads/batch_invariance.py on the tiny
checkpoint on the GPU, 32 prompts alone and in three mixed batches (chunked
prefill, radix-cache hits) for each router; an invariant router must report
zero differing prompts and a zero logprob difference. Writes JSON and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from moeframe.api import Engine
from moeframe.engine.sampling_params import SamplingParams
from moeframe.workloads.batch_invariance import measure_batch_invariance

ROUTERS = ("native", "top2", "hash", "random", "top_p", "expert_choice", "balanced")
CHUNKED = ("scheduler.chunk_size=16", "scheduler.max_batch_tokens=64")


def generate_tok_s(engine: Engine, batch: int, new_tokens: int) -> float:
    generator = torch.Generator().manual_seed(batch)
    prompts = torch.randint(1, engine.spec.vocab_size, (batch, 64), generator=generator).tolist()
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    engine.generate(prompts, SamplingParams(max_new_tokens=2, ignore_eos=True))  # warm-up
    rates = []
    for _ in range(3):
        engine.built.cache.clear()
        torch.cuda.synchronize()
        start = time.perf_counter()
        engine.generate(prompts, params)
        torch.cuda.synchronize()
        rates.append(batch * new_tokens / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="olmoe-1b-7b")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--out", type=Path, default=Path("deterministic.json"))
    parser.add_argument("--part", choices=["both", "speed", "invariance"], default="both", help="to split it over two calls")
    args = parser.parse_args()
    batches = args.batches.split(",") if args.part != "invariance" else []
    routers = ROUTERS if args.part != "speed" else ()
    result: dict = {"device": torch.cuda.get_device_name(), "preset": args.preset, "speed": {}, "invariance": {}}
    base = [f"model={args.preset}", "model.random_weights=true", "device=cuda", "dtype=bfloat16", "cache.max_tokens=16384"]
    for mode, extra in (("default", ["experts=triton"]), ("deterministic", ["deterministic=true"])) if batches else ():
        engine = Engine.from_overrides(base + extra)
        result["speed"][mode] = {b: generate_tok_s(engine, int(b), args.new_tokens) for b in batches}
        engine.close()
        del engine
        torch.cuda.empty_cache()
    for router in routers:
        engine = Engine.from_overrides(["model=tiny-olmoe", "device=cuda", "deterministic=true", f"router={router}", *CHUNKED])
        result["invariance"][router] = measure_batch_invariance(engine, num_prompts=32, max_new_tokens=8)
        engine.close()
    args.out.write_text(json.dumps(result, indent=2))
    print("| batch | default tok/s | deterministic tok/s | deterministic / default |\n|---|---|---|---|")
    for b in batches:
        fast, det = result["speed"]["default"][b], result["speed"]["deterministic"][b]
        print(f"| {b} | {fast:.1f} | {det:.1f} | {det / fast:.3f} |")
    print("\n| router | batch_invariant | differing share | max logprob diff |\n|---|---|---|---|")
    for router, m in result["invariance"].items():
        print(f"| {router} | {m['batch_invariant']} | {m['batch_invariance_differing_share']:.3f} | {m['batch_invariance_max_logprob_diff']:.3g} |")


if __name__ == "__main__":
    main()
