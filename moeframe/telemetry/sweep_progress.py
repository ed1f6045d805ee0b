"""A Hydra callback for ``-m`` sweeps: a progress bar over the jobs, and the comparison table at the end.

Hydra's basic launcher runs the jobs one after another in this process, so
one tqdm bar can follow them; the job count is the size of the override
product, computed the way Hydra's BasicSweeper expands it. Enabled in
conf/config.yaml under ``hydra.callbacks``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from tqdm import tqdm


def count_jobs(config: DictConfig) -> int | None:
    """Jobs in the sweep (None when the sweeper is not Hydra's basic one, or the overrides do not parse)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    arguments = [f"{k}={v}" for k, v in (config.hydra.sweeper.get("params") or {}).items()]
    arguments += list(config.hydra.overrides.task)
    try:
        overrides = OverridesParser.create().parse_overrides(arguments)
        batches = BasicSweeper.split_arguments(overrides, None)
    except (HydraException, AssertionError):
        return None
    return sum(len(batch) for batch in batches)


class SweepProgress(Callback):
    def __init__(self, table: bool = True) -> None:
        self.table = table
        self.bar: tqdm | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.bar = tqdm(total=count_jobs(config), desc="sweep", unit="run", disable=None)

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
        if not self.table:
            return
        from moeframe.telemetry.comparison import comparison_table, to_markdown
        from moeframe.telemetry.runs import collect_runs

        sweep_dir = Path(config.hydra.sweep.dir)
        runs = collect_runs([], [sweep_dir], []) if sweep_dir.is_dir() else []
        if runs:
            print(to_markdown(comparison_table(runs)))
            print(f"sweep folder: {sweep_dir}  (plots: python tools/compare.py --multirun {sweep_dir})")
