"""Cache ablation benchmark: one workload, several caches, in the same process, repeated and interleaved.

    python tools/bench_cache.py --caches none,radix --repeats 3 --write experiments/cache_ablation/README.md
    python tools/bench_cache.py --caches none,radix,paged workload.num_questions=16 model=tiny-mixtral

Positional arguments are Hydra overrides applied to every engine (the
default run is ``model=tiny-olmoe device=cpu dtype=float32 workload=few_shot``).
Each repeat starts every cache cold (``cache.clear()``) and runs the caches
one after another, so slow spells of a shared machine hit all of them; the
table gives the median over repeats. ``--profile`` prints where one run of
each cache spends its time.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import shlex
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

from moeframe import Engine, SamplingParams
from moeframe.workloads import WORKLOADS

BASE = ["model=tiny-olmoe", "device=cpu", "dtype=float32", "workload=few_shot", "workload.progress=false"]
COLUMNS = [
    ("cache", "{}"),
    ("cache_hit_rate", "{:.3f}"),
    ("throughput_tok_s", "{:.1f}"),
    ("total_tok_s", "{:.0f}"),
    ("ttft_ms_p50", "{:.1f}"),
    ("itl_ms_mean", "{:.1f}"),
    ("wall_s", "{:.2f}"),
    ("prompt_tokens", "{}"),
    ("generated_tokens", "{}"),
    ("evicted_tokens", "{}"),
    ("preemptions", "{}"),
    ("pool_peak_usage", "{:.3f}"),
]


def warm_up(engine: Engine) -> None:
    """First calls of torch ops are slow; run one unrelated request, then drop what it cached."""
    engine.generate([[1 + i for i in range(32)]], SamplingParams(max_new_tokens=4, ignore_eos=True))
    engine.built.cache.clear()


def run_once(engine: Engine, profile: bool) -> dict[str, Any]:
    workload = WORKLOADS.build(engine.cfg.workload)
    engine.built.cache.clear()
    if not profile:
        return workload.run(engine)
    profiler = cProfile.Profile()
    metrics = profiler.runcall(workload.run, engine)
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    print(out.getvalue())
    return metrics


def median_metrics(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-key median of numeric metrics (counts of a deterministic workload are equal across runs)."""
    return {k: statistics.median(r[k] for r in runs) for k, v in runs[0].items() if isinstance(v, (int, float))}


def markdown_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(fmt.format(row[name]) for name, fmt in COLUMNS) + " |")
    return "\n".join(lines)


def write_result(path: Path, command: str, table: str, summary: str) -> None:
    """Replace the generated block of ``path`` (between markers), keeping the hand-written text around it."""
    begin, end = "<!-- bench_cache:begin -->", "<!-- bench_cache:end -->"
    block = f"{begin}\nCommand:\n\n    {command}\n\n{table}\n\n{summary}\n{end}"
    text = path.read_text() if path.exists() else ""
    if begin in text and end in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every engine, e.g. workload.num_questions=64")
    parser.add_argument("--caches", default="none,radix", help="comma-separated cache choices; the first is the baseline")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--profile", action="store_true", help="profile the first repeat of each cache")
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose bench_cache block gets the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    caches = args.caches.split(",")
    engines = {c: Engine.from_overrides(BASE + [f"cache={c}", *args.overrides]) for c in caches}
    for engine in engines.values():
        warm_up(engine)
    runs: dict[str, list[dict[str, Any]]] = {c: [] for c in caches}
    for repeat in range(args.repeats):
        for cache, engine in engines.items():
            runs[cache].append(run_once(engine, args.profile and repeat == 0))
            print(f"repeat {repeat + 1}/{args.repeats} {cache}: {runs[cache][-1]['throughput_tok_s']:.1f} tok/s", file=sys.stderr)
    rows = [{"cache": c, **median_metrics(runs[c])} for c in caches]
    base = rows[0]
    summary = "\n".join(
        f"- {row['cache']} vs {base['cache']}: {row['throughput_tok_s'] / base['throughput_tok_s']:.2f}x throughput, "
        f"{row['ttft_ms_p50'] / base['ttft_ms_p50']:.2f}x median TTFT, hit rate {row['cache_hit_rate']:.3f}"
        for row in rows[1:]
    )
    summary += f"\n- median of {args.repeats} interleaved repeats; torch threads: {torch.get_num_threads()}"
    table = markdown_table(rows)
    print(table)
    print(summary)
    if args.write is not None:
        command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
        write_result(args.write, command, table, summary)


if __name__ == "__main__":
    main()
