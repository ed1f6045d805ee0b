"""tools/compare.py and the comparison it prints, over run folders recorded by hand in run.py's layout."""

from __future__ import annotations

import csv
import io
import json
import runpy
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from moeframe.telemetry.comparison import comparison_table, merge_repeats, to_csv, to_markdown
from moeframe.telemetry.plots import batch_key, comparison_png, load_ratio
from moeframe.telemetry.runs import collect_runs, load_run, sweep_run_dirs, wandb_run_dirs

REPO = Path(__file__).resolve().parents[1]


def base_config(**changes: Any) -> dict[str, Any]:
    config = {
        "seed": 0,
        "model": {"preset": "tiny-olmoe", "path": None},
        "router": {"name": "top_k", "k": 2, "capacity_factor": None},
        "cache": {"name": "radix", "page_size": 1},
        "experts": {"name": "reference"},
        "workload": {"name": "mixed", "num_requests": 4, "max_new_tokens": 8},
        "logger": {"name": "jsonl"},
    }
    for dotted, value in changes.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


def record(
    folder: Path,
    config: dict[str, Any],
    metrics: dict[str, Any],
    choices: dict[str, str] | None = None,
    counts: list[list[int]] | None = None,
) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    stats = {"expert_load": {"counts": counts}} if counts else {}
    (folder / "metrics.json").write_text(json.dumps({"metrics": metrics, "stats": stats}))
    (folder / "provenance.json").write_text(json.dumps({"hydra": {"choices": choices or {}}}))
    return folder


def metrics(tok_s: float, **extra: Any) -> dict[str, Any]:
    return {"throughput_tok_s": tok_s, "ttft_ms_p50": 10.0, "itl_ms_mean": 2.0, "cache_hit_rate": 0.5} | extra


def test_table_shows_identity_groups_and_varying_leaves_only(tmp_path: Path) -> None:
    a = record(tmp_path / "a", base_config(**{"router.capacity_factor": 1.0}), metrics(10.0))
    b = record(tmp_path / "b", base_config(**{"router.capacity_factor": 1.25}), metrics(20.0))
    table = comparison_table(collect_runs([a, b], [], []))
    assert table.columns[:6] == ["run", "model", "router", "cache", "experts", "router.capacity_factor"]
    assert "seed" not in table.columns and "workload.num_requests" not in table.columns
    assert [row[5] for row in table.rows] == [1.0, 1.25]
    assert [row[table.columns.index("tok/s")] for row in table.rows] == [10.0, 20.0]


def test_hydra_choices_name_the_runs_and_hide_their_own_leaves(tmp_path: Path) -> None:
    top1 = record(tmp_path / "a", base_config(**{"router.k": 1}), metrics(1.0), {"router": "top1"})
    top2 = record(tmp_path / "b", base_config(**{"router.k": 2}), metrics(2.0), {"router": "top2"})
    table = comparison_table(collect_runs([top1, top2], [], []))
    assert [row[table.columns.index("router")] for row in table.rows] == ["top1", "top2"]
    assert "router.k" not in table.columns


def test_without_choices_a_group_is_named_by_its_component(tmp_path: Path) -> None:
    run = record(tmp_path / "a", base_config(**{"model.path": "/ckpt/dense-twin", "model.preset": None}), metrics(1.0))
    table = comparison_table([load_run(run)])
    row = dict(zip(table.columns, table.rows[0]))
    assert row["model"] == "ckpt/dense-twin" and row["router"] == "top_k" and row["cache"] == "radix"


def test_a_group_whose_choice_varies_gets_a_column(tmp_path: Path) -> None:
    a = record(tmp_path / "a", base_config(), metrics(1.0))
    b = record(tmp_path / "b", base_config(**{"workload": {"name": "few_shot", "prefix_tokens": 64}}), metrics(2.0))
    table = comparison_table(collect_runs([a, b], [], []))
    assert [row[table.columns.index("workload")] for row in table.rows] == ["mixed", "few_shot"]
    assert not any(c.startswith("workload.") for c in table.columns)


def test_fidelity_metrics_appear_when_a_run_reports_them(tmp_path: Path) -> None:
    a = record(tmp_path / "a", base_config(), metrics(1.0, kl_vs_native=0.25, top1_agreement=0.9))
    b = record(tmp_path / "b", base_config(**{"seed": 1}), metrics(2.0))
    table = comparison_table(collect_runs([a, b], [], []))
    kl, agree = table.columns.index("kl_vs_native"), table.columns.index("top1_agreement")
    assert [row[kl] for row in table.rows] == [0.25, None]
    assert [row[agree] for row in table.rows] == [0.9, None]
    assert "kl_vs_native" not in comparison_table([load_run(b)]).columns


def test_markdown_has_a_header_a_rule_and_one_line_per_run(tmp_path: Path) -> None:
    runs = collect_runs([record(tmp_path / n, base_config(seed=i), metrics(i + 0.5)) for i, n in enumerate("abc")], [], [])
    lines = to_markdown(comparison_table(runs)).splitlines()
    assert len(lines) == 2 + 3
    assert len({len(line) for line in lines}) == 1
    assert set(lines[1]) <= {"|", "-", ":"}
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["a", "b", "c"]
    assert "| - |" not in lines[2]


def test_csv_round_trips_the_table_values(tmp_path: Path) -> None:
    runs = collect_runs([record(tmp_path / n, base_config(seed=i), metrics(1.0 / 3 + i)) for i, n in enumerate("ab")], [], [])
    table = comparison_table(runs)
    parsed = list(csv.reader(io.StringIO(to_csv(table))))
    assert parsed[0] == table.columns
    col = table.columns.index("tok/s")
    assert [float(row[col]) for row in parsed[1:]] == [row[col] for row in table.rows]


def test_sweep_jobs_load_in_job_number_order(tmp_path: Path) -> None:
    for job in (10, 2, 0, 1):
        record(tmp_path / "sweep" / f"{job}_router=x{job}", base_config(seed=job), metrics(float(job)))
    (tmp_path / "sweep" / "multirun.yaml").write_text("{}")
    names = [p.name.split("_")[0] for p in sweep_run_dirs(tmp_path / "sweep")]
    assert names == ["0", "1", "2", "10"]
    runs = collect_runs([], [tmp_path / "sweep"], [])
    assert [r.name for r in runs] == ["#0", "#1", "#2", "#10"]


def test_wandb_dir_finds_the_record_copies_of_every_run(tmp_path: Path) -> None:
    for i, stamp in enumerate(["20260101_000002-bbb", "20260101_000001-aaa"]):
        files = tmp_path / f"job{i}" / "wandb" / f"offline-run-{stamp}" / "files" / "moeframe"
        files.parent.mkdir(parents=True)
        record(files, base_config(seed=i), metrics(float(i)))
    found = wandb_run_dirs(tmp_path)
    assert [p.parents[1].name for p in found] == ["offline-run-20260101_000001-aaa", "offline-run-20260101_000002-bbb"]
    assert [r.name for r in collect_runs([], [], [tmp_path])] == ["aaa", "bbb"]


def test_a_folder_without_records_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        collect_runs([tmp_path / "empty"], [], [])


def test_load_ratio_divides_each_layer_by_its_mean() -> None:
    ratio = load_ratio([[1, 3], [0, 0], [2, 2]])
    assert ratio.tolist() == [[0.5, 1.5], [0.0, 0.0], [1.0, 1.0]]


def test_batch_key_is_the_swept_batch_setting(tmp_path: Path) -> None:
    runs = [
        load_run(record(tmp_path / f"n{n}", base_config(**{"workload.num_requests": n}), metrics(float(n))))
        for n in (1, 4, 16)
    ]
    assert batch_key(runs) == "workload.num_requests"
    assert batch_key(runs[:1]) is None


def test_png_gains_a_batch_panel_when_a_sweep_varies_batch_size(tmp_path: Path) -> None:
    from PIL import Image

    counts = [[1, 2, 3, 4], [4, 3, 2, 1]]
    runs = [
        load_run(record(tmp_path / f"n{n}", base_config(**{"workload.num_requests": n}), metrics(float(n)), counts=counts))
        for n in (1, 4)
    ]
    png = comparison_png(runs, tmp_path / "cmp.png")
    with Image.open(png) as image:
        width = image.size[0]
    one = comparison_png(runs[:1], tmp_path / "one.png")
    with Image.open(one) as image:
        assert image.size[0] < width  # one run: no batch curve panel


def test_cli_prints_the_table_and_writes_csv_and_png(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for job in range(2):
        record(tmp_path / "sweep" / f"{job}_router=r{job}", base_config(seed=job), metrics(job + 1.0), {"router": f"r{job}"})
    argv = ["compare.py", "--multirun", str(tmp_path / "sweep"), "--csv", str(tmp_path / "t.csv")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(REPO / "tools" / "compare.py"), run_name="__main__")
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "| #0 " in out and "| #1 " in out and "r1" in out
    assert (tmp_path / "t.csv").read_text().count("\n") == 3
    assert (tmp_path / "sweep" / "compare.png").stat().st_size > 0


def repeated_runs(tmp_path: Path) -> list:
    runs = []
    for router, speeds in (("top1", (3.0, 1.0, 2.0)), ("top2", (10.0, 30.0, 20.0))):
        for seed, tok_s in enumerate(speeds):
            config = base_config(seed=seed, **{"router.k": int(router[-1])})
            extra = {"note": "x", "ttft_ms_p50": 100.0 / tok_s}
            runs.append(load_run(record(tmp_path / f"{router}-{seed}", config, metrics(tok_s) | extra, {"router": router})))
    return runs


def test_repeats_merge_into_medians(tmp_path: Path) -> None:
    merged = merge_repeats(repeated_runs(tmp_path), "seed", "median")
    assert [(r.choice("router"), r.metrics["throughput_tok_s"], r.metrics["repeats"]) for r in merged] == [
        ("top1", 2.0, 3), ("top2", 20.0, 3)
    ]
    assert merged[0].metrics["note"] == "x"
    table = comparison_table(merged)
    assert "seed" not in table.columns
    assert [row[table.columns.index("n")] for row in table.rows] == [3, 3]


def test_sweep_jobs_nested_by_a_slash_in_an_override_are_found(tmp_path: Path) -> None:
    for job, kind in enumerate(("moe", "dense")):
        record(tmp_path / "sweep" / f"{job}_model.path=ckpt" / kind, base_config(**{"model.path": f"ckpt/{kind}"}), metrics(1.0))
    wandb_copy = tmp_path / "sweep" / "0_model.path=ckpt" / "moe" / "wandb" / "offline-run-x-abc" / "files" / "moeframe"
    record(wandb_copy, base_config(), metrics(9.0))
    runs = collect_runs([], [tmp_path / "sweep"], [])
    assert [(r.name, r.choice("model")) for r in runs] == [("#0", "ckpt/moe"), ("#1", "ckpt/dense")]


def test_repeats_merge_into_the_fastest_repeat_whole(tmp_path: Path) -> None:
    merged = merge_repeats(repeated_runs(tmp_path), "seed", "best")
    assert [(r.metrics["throughput_tok_s"], r.metrics["ttft_ms_p50"]) for r in merged] == [
        (3.0, 100.0 / 3.0), (30.0, 100.0 / 30.0)
    ]
    assert "seed" not in comparison_table(merged).columns
    assert [r.metrics["repeats"] for r in merged] == [3, 3]


def test_a_leaf_swept_across_choices_keeps_its_column(tmp_path: Path) -> None:
    runs = []
    for backend in ("xgrammar", "fsm"):
        for jump in (True, False):
            config = base_config(constraint={"name": backend, "jump_forward": jump})
            runs.append(load_run(record(tmp_path / f"{backend}-{jump}", config, metrics(1.0, forward_steps=18 if jump else 83))))
    table = comparison_table(runs)
    assert [row[table.columns.index("constraint.jump_forward")] for row in table.rows] == [True, False, True, False]
    assert [row[table.columns.index("forward_steps")] for row in table.rows] == [18, 83, 18, 83]


def test_the_routing_axes_panel_draws_kl_against_experts_per_token_one_line_per_axis(tmp_path):
    from matplotlib.figure import Figure

    from moeframe.telemetry.plots import draw_quality_cost, routing_axis
    from moeframe.telemetry.runs import RunRecord

    def run(name: str, router: dict, routing: dict, experts: float, kl: float) -> RunRecord:
        config = base_config(router=router) | {"routing": {"temperature": 1.0, "skip_beta": 0.0, "prune_experts": None} | routing}
        return RunRecord(tmp_path / name, config, metrics(1.0, kl_vs_native=kl, expert_load_experts_per_token=experts))

    runs = [
        run("a", {"name": "top_k", "k": 2}, {}, 2.0, 0.3),
        run("b", {"name": "top_k", "k": 4}, {}, 4.0, 0.0),
        run("c", {"name": "top_p", "p": 0.5}, {}, 1.5, 0.4),
        run("d", {"name": "native"}, {"skip_beta": 0.3}, 3.1, 0.1),
        run("e", {"name": "native"}, {"prune_experts": 8, "prune_by": "reap"}, 4.0, 0.7),
    ]
    assert [routing_axis(r) for r in runs] == ["top_k", "top_k", "top_p", "native + skip", "native + prune (reap)"]
    ax = Figure().add_subplot()
    draw_quality_cost(ax, runs)
    lines = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert lines == {
        "native + prune (reap)": ([4.0], [0.7]),
        "native + skip": ([3.1], [0.1]),
        "top_k": ([2.0, 4.0], [0.3, 0.0]),
        "top_p": ([1.5], [0.4]),
    }
