"""logger=wandb: the run in Weights & Biases: resolved config, metrics, heatmaps as images, tables.

Offline unless an API key is present (mode=auto), so a sweep on a machine
without network still leaves complete runs that ``wandb sync`` uploads later.
The run-folder files (metrics.json, config.yaml, provenance.json, the
heatmap) are copied into the W&B run's files under ``moeframe/``, so
``tools/compare.py --wandb-dir`` reads the same records as from a run folder.
The run layout follows W&B's own Hydra guide: one run per Hydra job, the
resolved config as the run config, the sweep as the run group.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from numbers import Number
from pathlib import Path
from typing import Any

from moeframe.telemetry.loggers import LOGGERS
from moeframe.telemetry.loggers.base import RunLogger

MODES = ("auto", "offline", "online", "disabled")
FILES_SUBDIR = "moeframe"


@dataclass
class WandbParams:
    mode: str = "auto"  # auto: online when WANDB_API_KEY is set, else offline
    project: str = "moeframe"
    entity: str | None = None
    group: str | None = None  # null: the sweep folder's name in a multirun, else no group
    tags: list[str] = field(default_factory=list)
    run_name: str | None = None  # null: the run's override string (or its folder's name)
    dir: str | None = None  # null: the run folder

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown choice '{self.mode}'; valid choices: {', '.join(MODES)}")
        if not self.project:
            raise ValueError("project must not be empty")


def resolve_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


@LOGGERS.register("wandb", params=WandbParams)
class WandbLogger(RunLogger):
    def __init__(
        self, params: WandbParams, run_dir: Path, run_name: str | None = None, group: str | None = None, **_: object
    ) -> None:
        import wandb

        super().__init__(run_dir)
        self.wandb = wandb
        wandb_dir = Path(params.dir) if params.dir else run_dir
        wandb_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=params.project,
            entity=params.entity,
            group=params.group or group,
            tags=list(params.tags),
            name=params.run_name or run_name or run_dir.name,
            dir=str(wandb_dir),
            mode=resolve_mode(params.mode),
            reinit="finish_previous",
            settings=wandb.Settings(console="off", quiet=True),
        )
        self.files_dir = Path(self.run.dir) / FILES_SUBDIR

    def log_config(self, config: dict[str, Any]) -> None:
        self.run.config.update(config, allow_val_change=True)

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (Number, str))}
        self.run.log(scalars, step=step)
        self.run.summary.update(scalars)

    def log_image(self, name: str, path: Path) -> None:
        self.run.log({name: self.wandb.Image(str(path), caption=name)})

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self.run.log({name: self.wandb.Table(columns=list(columns), data=[list(r) for r in rows])})

    def log_file(self, path: Path) -> None:
        if self.run.disabled:
            return
        self.files_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, self.files_dir / path.name)

    def close(self) -> None:
        self.run.finish()
