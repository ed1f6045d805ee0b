"""``python -m moeframe.run``: the run folder it leaves, reruns from it, sweeps, and the summary it prints."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from moeframe.api import compose_config
from moeframe.run import run_study
from moeframe.telemetry.summary import summary_table
from moeframe.telemetry.sweep_progress import count_jobs

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "workload.num_requests=3",
    "workload.max_new_tokens=4",
    "workload.progress=false",
    "workload.fidelity_chunks=0",
    "cache=radix",
]


def outputs(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "outputs.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def recorded_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    run_study(compose_config(SMALL), run_dir)
    return run_dir


def test_run_folder_holds_config_metrics_outputs_and_heatmap(recorded_run: Path) -> None:
    config = yaml.safe_load((recorded_run / "config.yaml").read_text())
    assert config == OmegaConf.to_container(compose_config(SMALL), resolve=True)
    recorded = json.loads((recorded_run / "metrics.json").read_text())
    lines = outputs(recorded_run)
    assert [line["request_id"] for line in lines] == sorted(line["request_id"] for line in lines)
    assert len(lines) == recorded["metrics"]["requests"] == 3
    assert all(len(line["token_ids"]) == 4 and line["finish_reason"] == "length" for line in lines)
    assert sum(len(line["token_ids"]) for line in lines) == recorded["metrics"]["generated_tokens"]
    assert recorded["metrics"]["experts_kernel"] == "reference"  # experts=auto on the CPU
    counts = torch.tensor(recorded["stats"]["expert_load"]["counts"])
    assert int(counts.sum()) == recorded["metrics"]["expert_load_kept"]
    assert (recorded_run / "expert_load.png").stat().st_size > 0
    assert (recorded_run / "events.jsonl").is_file()


def test_provenance_records_commit_versions_device_and_seed(recorded_run: Path) -> None:
    record = json.loads((recorded_run / "provenance.json").read_text())
    commit = record["git"]["commit"]
    ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", commit, "HEAD"], cwd=REPO)  # others may commit meanwhile
    assert re.fullmatch(r"[0-9a-f]{40}", commit) and ancestor.returncode == 0
    assert isinstance(record["git"]["dirty"], bool)
    assert record["versions"]["torch"] == torch.__version__
    assert set(record["versions"]) >= {"moeframe", "torch", "triton", "transformers"}
    assert record["seed"] == 0 and record["device"].startswith("cpu")


def test_rerun_from_the_run_folder_config_reproduces_greedy_outputs(recorded_run: Path, tmp_path: Path) -> None:
    cfg = OmegaConf.load(recorded_run / "config.yaml")
    run_study(cfg, tmp_path)
    first, again = outputs(recorded_run), outputs(tmp_path)
    assert [line["prompt_ids"] for line in again] == [line["prompt_ids"] for line in first]
    assert [line["token_ids"] for line in again] == [line["token_ids"] for line in first]


def test_summary_lays_scalar_metrics_out_in_two_columns() -> None:
    metrics = {"a": 1, "bb": 2.0, "ccc": 0.123456, "d": True, "nested": {"x": 1}, "peak_memory_bytes": 3 * 2**20}
    lines = summary_table(metrics, "title").splitlines()
    assert lines[0] == "title" and set(lines[1]) == {"-"} and lines[1] == lines[-1]
    body = [line.split() for line in lines[2:-1]]
    assert body == [["a", "1", "d", "True"], ["bb", "2", "peak_memory_MiB", "3"], ["ccc", "0.1235"]]


def test_sweep_job_count_is_the_override_product() -> None:
    config = OmegaConf.create(
        {"hydra": {"sweeper": {"params": {"seed": "0,1,2"}}, "overrides": {"task": ["router=top1,top2", "cache=radix,paged", "logger=wandb"]}}}
    )
    assert count_jobs(config) == 12


def test_router_by_cache_sweep_writes_four_offline_wandb_runs_that_compare_reads(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env |= {"WANDB_CONFIG_DIR": str(tmp_path / "wb_config"), "WANDB_CACHE_DIR": str(tmp_path / "wb_cache")}
    sweep = tmp_path / "sweep"
    command = [sys.executable, "-m", "moeframe.run", "-m", "router=top1,top2", "cache=radix,paged", "logger=wandb"]
    command += ["workload.num_requests=2", "workload.max_new_tokens=4", "workload.progress=false", "workload.fidelity_chunks=0"]
    command += [f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    offline_runs = list(sweep.glob("*/wandb/offline-run-*/run-*.wandb"))
    assert len(offline_runs) == 4
    assert done.stdout.count("[job ") == 4

    png = tmp_path / "compare.png"
    compare = [sys.executable, "tools/compare.py", "--wandb-dir", str(sweep), "--png", str(png)]
    table = subprocess.run(compare, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr[-3000:]
    rows = [line for line in table.stdout.splitlines() if re.match(r"\| \w{8} ", line)]
    assert sorted(tuple(cell.strip() for cell in row.split("|")[3:5]) for row in rows) == [
        ("top1", "paged"), ("top1", "radix"), ("top2", "paged"), ("top2", "radix")
    ]
    assert png.stat().st_size > 0
