"""Cold start on a GPU: each batch size's first request against the same request repeated, and the build time.

    python tools/bench_cold_start.py --preset olmoe-1b-7b [--batches 1,2,...] [overrides...]   # e.g. runner.warmup=false

Builds one engine (random weights of the preset, ``cache=none`` so a repeat recomputes its prompt), then for
each batch size runs one request batch twice, timing each run end to end; a kernel compiled or a shape traced
on first use shows as a first run slower than its repeat. Prints a markdown table and writes it as JSON.
Run it twice in a row to see what Triton's on-disk cache saves the second build.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from moeframe.api import Engine, compose_config
from moeframe.engine.sampling_params import SamplingParams


def timed_generate(engine: Engine, prompts: list[list[int]], params: SamplingParams) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    engine.generate(prompts, params)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="olmoe-1b-7b")
    parser.add_argument("--batches", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--out", default="cold_start.json")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for the engine")
    args = parser.parse_args()
    overrides = [f"model={args.preset}", "model.random_weights=true", "device=cuda", "cache=none", *args.overrides]
    start = time.perf_counter()
    engine = Engine(compose_config(overrides))
    build_s = time.perf_counter() - start
    params = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)
    g = torch.Generator().manual_seed(0)
    rows = []
    for batch in (int(b) for b in args.batches.split(",")):
        prompts = torch.randint(1, engine.spec.vocab_size, (batch, args.prompt_len), generator=g).tolist()
        first, repeat = timed_generate(engine, prompts, params), timed_generate(engine, prompts, params)
        rows.append({"batch": batch, "first_s": first, "repeat_s": repeat, "first_over_repeat": first / repeat})
    result = {
        "overrides": overrides, "device": torch.cuda.get_device_name(), "build_s": build_s,
        "warmup_s": engine.stats()["warmup_s"], "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
        "rows": rows,
    }  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"build {build_s:.1f} s (warm-up {result['warmup_s']}), {' '.join(overrides)}")
    print("| batch | first s | repeat s | first / repeat |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['batch']} | {row['first_s']:.3f} | {row['repeat_s']:.3f} | {row['first_over_repeat']:.2f} |")


if __name__ == "__main__":
    main()
