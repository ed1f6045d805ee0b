"""One table over a set of recorded runs: what each run changed, and what it measured.

Columns are chosen from the runs themselves, the way W&B's run table hides
columns that are constant: the identity groups (model, router, cache,
experts) always; any other group whose choice differs between the runs; any
config leaf that differs other than through its group's choice (a swept
``router.capacity_factor``, ``constraint.jump_forward`` across backends); then the key metrics, and the workload-specific ones
(KL vs native, top-1 agreement, JSON validity, mask time, ...) of runs whose
workload reports them.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass, replace
from typing import Any

from moeframe.telemetry.runs import RunRecord

IDENTITY_GROUPS = ("model", "router", "cache", "experts")
KEY_METRICS = (
    ("repeats", "n"),
    ("throughput_tok_s", "tok/s"),
    ("ttft_ms_p50", "ttft p50 ms"),
    ("itl_ms_mean", "itl ms"),
    ("cache_hit_rate", "hit rate"),
    ("expert_load_max_mean_load", "max/mean load"),
    ("expert_load_drop_rate", "drop rate"),
)
# words of workload-specific metrics worth a column: router fidelity, routing axes (experts per token,
# expert weight bytes), batch invariance, constrained decoding
EXTRA_METRIC_WORDS = ("kl", "agreement", "perplexity", "accuracy", "validity", "mask", "steps", "experts", "weight", "invariant", "invariance")


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Any]]


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(node, dict):
        return {prefix: node}
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        leaves.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return leaves


def differs(values: list[Any]) -> bool:
    return len({repr(v) for v in values}) > 1


def group_names(runs: list[RunRecord]) -> list[str]:
    """Top-level config sections that are component groups ({name: ...} nodes, or model)."""
    names: list[str] = []
    for run in runs:
        for key, value in run.config.items():
            is_group = key == "model" or (isinstance(value, dict) and "name" in value)
            if is_group and key not in names:
                names.append(key)
    return names


def varying_columns(runs: list[RunRecord]) -> tuple[list[str], list[str]]:
    """(group columns, config-leaf columns) that tell the runs apart."""
    groups = group_names(runs)
    choice_varies = {g: differs([r.choice(g) for r in runs]) for g in groups}
    group_cols = [g for g in IDENTITY_GROUPS if g in groups] + [
        g for g in groups if g not in IDENTITY_GROUPS and choice_varies[g]
    ]
    leaves = [flatten(r.config) for r in runs]
    keys = list(dict.fromkeys(k for leaf in leaves for k in leaf))
    leaf_cols = []
    for key in keys:
        group = key.split(".", 1)[0]
        if group in groups and (key in ("model.preset", "model.path") or key.endswith(".name")):
            continue
        values = [leaf.get(key) for leaf in leaves]
        if not differs(values):
            continue
        if group in groups and choice_varies[group] and not varies_within_a_choice(runs, group, values):
            continue  # told apart by the group's column already (router.k of top1 vs top2)
        leaf_cols.append(key)
    return group_cols, leaf_cols


def varies_within_a_choice(runs: list[RunRecord], group: str, values: list[Any]) -> bool:
    seen: dict[str, set[str]] = {}
    for run, value in zip(runs, values):
        seen.setdefault(repr(run.choice(group)), set()).add(repr(value))
    return any(len(v) > 1 for v in seen.values())


def metric_columns(runs: list[RunRecord]) -> list[tuple[str, str]]:
    present = [m for r in runs for m in r.metrics]
    columns = [(key, header) for key, header in KEY_METRICS if key in present]
    for key in dict.fromkeys(present):
        words = key.lower().split("_")
        if any(w in words for w in EXTRA_METRIC_WORDS) and all(key != k for k, _ in columns):
            columns.append((key, key))
    return columns


def merge_repeats(runs: list[RunRecord], key: str, how: str = "median") -> list[RunRecord]:
    """Runs that differ only in config leaf ``key`` (a repeat index such as ``seed``) merged into one row.

    ``median``: each numeric metric becomes the median over the repeats.
    ``best``: the repeat with the highest throughput stands for all, as
    timeit reports the fastest of its repeats, because on a machine shared
    with other jobs slower repeats measure the neighbours' interference.
    ``repeats`` counts the merged runs.
    """
    if how not in ("median", "best"):
        raise ValueError(f"how: unknown choice '{how}'; valid choices: median, best")
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        leaves = sorted((k, repr(v)) for k, v in flatten(run.config).items() if k != key)
        groups.setdefault(repr(leaves) + repr(sorted(run.choices.items())), []).append(run)
    merged = []
    for members in groups.values():
        if how == "best":
            best = max(members, key=lambda r: r.metrics.get("throughput_tok_s") or 0.0)
            merged.append(replace(members[0], metrics=best.metrics | {"repeats": len(members)}))
            continue
        metrics: dict[str, Any] = {}
        for name, value in members[0].metrics.items():
            values = [m.metrics.get(name) for m in members]
            numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
            metrics[name] = statistics.median(values) if numeric else value
        metrics["repeats"] = len(members)
        merged.append(replace(members[0], metrics=metrics))
    return merged


def comparison_table(runs: list[RunRecord]) -> Table:
    group_cols, leaf_cols = varying_columns(runs)
    metrics = metric_columns(runs)
    columns = ["run"] + group_cols + leaf_cols + [header for _, header in metrics]
    rows = [
        [run.name]
        + [run.choice(g) for g in group_cols]
        + [run.value(k) for k in leaf_cols]
        + [run.metrics.get(key) for key, _ in metrics]
        for run in runs
    ]
    return Table(columns, rows)


def format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|")


def to_markdown(table: Table) -> str:
    cells = [[format_cell(v) for v in row] for row in table.rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(table.columns)]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] is None for row in table.rows) for i in range(len(widths))]

    def line(values: list[str]) -> str:
        padded = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if num else ("-" * (w + 2)) for w, num in zip(widths, numeric)) + "|"
    return "\n".join([line(list(table.columns)), rule] + [line(row) for row in cells])


def to_csv(table: Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.columns)
    writer.writerows([["" if v is None else v for v in row] for row in table.rows])
    return out.getvalue()
