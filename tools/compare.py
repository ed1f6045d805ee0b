"""Compare recorded runs: one markdown (or CSV) table and one PNG.

    python tools/compare.py outputs/2026-11-25/10-00-00 outputs/2026-11-25/10-05-00
    python tools/compare.py --multirun multirun/2026-11-25/11-00-00 --png sweep.png
    python tools/compare.py --wandb-dir multirun/2026-11-25/11-00-00 --csv runs.csv
    python tools/compare.py --multirun multirun/router_ablation --repeats seed --stat best   # one row per setting

It reads what run.py wrote (metrics.json, config.yaml, provenance.json), from
run folders, from the job folders of a Hydra sweep, or from the copies the
W&B logger keeps in each W&B run; it never runs the engine.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moeframe.telemetry.comparison import comparison_table, merge_repeats, to_csv, to_markdown
from moeframe.telemetry.plots import comparison_png
from moeframe.telemetry.runs import collect_runs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="*", type=Path, help="run folders (each with metrics.json and config.yaml)")
    parser.add_argument("--multirun", action="append", type=Path, default=[], help="a Hydra sweep folder: all its jobs")
    parser.add_argument("--wandb-dir", action="append", type=Path, default=[], help="a folder searched for W&B runs")
    parser.add_argument("--repeats", metavar="KEY", help="merge runs that differ only in this config key (e.g. seed) into one row")
    parser.add_argument("--stat", choices=["median", "best"], default="median", help="how --repeats merges: metric medians, or the fastest repeat")
    parser.add_argument("--csv", type=Path, help="also write the table as CSV here")
    parser.add_argument("--png", type=Path, help="where to write the plots (default: compare.png in the first folder given)")
    parser.add_argument("--no-png", action="store_true", help="print the table only")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = collect_runs(args.run_dirs, args.multirun, args.wandb_dir)
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if not runs:
        print("error: no recorded runs found", file=sys.stderr)
        return 2
    if args.repeats:
        runs = merge_repeats(runs, args.repeats, args.stat)
    table = comparison_table(runs)
    print(to_markdown(table))
    if args.csv:
        args.csv.write_text(to_csv(table))
        print(f"csv: {args.csv}")
    if not args.no_png:
        first = (args.multirun + args.wandb_dir + args.run_dirs)[0]
        png = comparison_png(runs, args.png or first / "compare.png")
        print(f"png: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
