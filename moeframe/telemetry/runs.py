"""Recorded runs read back from disk: a run folder, a Hydra sweep folder, or W&B offline/online run files.

A run record is what run.py wrote (metrics.json, config.yaml,
provenance.json); the W&B logger keeps copies of the same files in each W&B
run's ``files/moeframe/``, so both sources load the same way. Nothing here
touches the engine: comparing runs never re-runs them (STYLE.md habit 12).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

RECORD_FILES = ("metrics.json", "config.yaml")


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    metrics: dict[str, Any]
    stats: dict[str, Any] = field(default_factory=dict)
    choices: dict[str, str] = field(default_factory=dict)  # config group -> the yaml chosen (Hydra runs only)
    job: int | None = None  # the Hydra sweep job number, for runs read from a sweep folder

    @property
    def name(self) -> str:
        """A sweep job's number, a W&B copy's run id, else the run folder's name."""
        if self.job is not None:
            return f"#{self.job}"
        if self.path.parent.name == "files":
            return self.path.parents[1].name.rsplit("-", 1)[-1]
        return self.path.name

    def value(self, dotted: str) -> Any:
        """A config leaf by dotted key (``router.k``), or None."""
        node: Any = self.config
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return None
            node = node[part]
        return node

    def choice(self, group: str) -> Any:
        """What a group was set to: the yaml chosen, else the component's name.

        For the model, ``model.path`` wins over the chosen preset (as it does
        when the engine loads), named by its last two folders.
        """
        if group == "model" and self.value("model.path"):
            return "/".join(Path(self.value("model.path")).parts[-2:])
        if group in self.choices:
            return self.choices[group]
        if group == "model":
            return self.value("model.preset")
        return self.value(f"{group}.name")

    def expert_load_counts(self) -> list[list[int]] | None:
        return self.stats.get("expert_load", {}).get("counts")


def is_run_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in RECORD_FILES)


def load_run(path: Path) -> RunRecord:
    recorded = json.loads((path / "metrics.json").read_text())
    config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    choices: dict[str, str] = {}
    provenance = path / "provenance.json"
    if provenance.is_file():
        hydra = json.loads(provenance.read_text()).get("hydra") or {}
        choices = dict(hydra.get("choices") or {})
    return RunRecord(path, config, recorded.get("metrics", {}), recorded.get("stats", {}), choices)


def sweep_run_dirs(sweep_dir: Path) -> list[Path]:
    """The job folders of a Hydra multirun folder, in job order (``0_...``, ``1_...``, ..., ``10_...``).

    An override value with a slash (``model.path=ckpt/moe``) nests the job
    folder below ``N_...``, so folders are found at any depth; the W&B copies
    inside a job (``files/moeframe``) are not jobs of their own.
    """
    jobs = [
        p.parent
        for p in sweep_dir.rglob("metrics.json")
        if is_run_dir(p.parent) and "files" not in p.relative_to(sweep_dir).parts
    ]
    return sorted(jobs, key=lambda p: (job_number(p.relative_to(sweep_dir).parts[0]), str(p)))


def job_number(name: str) -> int:
    head = name.split("_", 1)[0]
    return int(head) if head.isdigit() else 1 << 30


def wandb_run_dirs(wandb_dir: Path) -> list[Path]:
    """Every W&B run under ``wandb_dir`` (at any depth) that holds a moeframe record, oldest first."""
    found = [p.parent for p in wandb_dir.rglob("files/moeframe/metrics.json") if is_run_dir(p.parent)]
    return sorted(found, key=lambda p: (p.parents[1].name.split("-", 2)[-1], str(p)))


def collect_runs(run_dirs: list[Path], multirun_dirs: list[Path], wandb_dirs: list[Path]) -> list[RunRecord]:
    runs: list[RunRecord] = []
    for path in run_dirs:
        if not is_run_dir(path):
            raise FileNotFoundError(f"{path} is not a run folder (it needs {' and '.join(RECORD_FILES)})")
        runs.append(load_run(path))
    for sweep in multirun_dirs:
        for path in sweep_run_dirs(sweep):
            number = job_number(path.relative_to(sweep).parts[0])
            runs.append(replace(load_run(path), job=number if number < 1 << 30 else None))
    runs.extend(load_run(p) for p in wandb_dirs_runs(wandb_dirs))
    return runs


def wandb_dirs_runs(wandb_dirs: list[Path]) -> list[Path]:
    return [p for wandb_dir in wandb_dirs for p in wandb_run_dirs(wandb_dir)]
