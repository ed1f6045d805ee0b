"""The logger interface: a run's config, metrics, tables, images and files go through it.

run.py writes every artifact to the run folder itself; a logger mirrors them
to wherever it sends runs (a JSON-lines file, Weights & Biases), so the run
folder alone is always enough for tools/compare.py.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any


class RunLogger(ABC):
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    @abstractmethod
    def log_config(self, config: dict[str, Any]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None: ...

    @abstractmethod
    def log_image(self, name: str, path: Path) -> None: ...

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        """Tables default to metrics rows; loggers with a table type override this."""
        self.log_metrics({name: [dict(zip(columns, row)) for row in rows]})

    def log_file(self, path: Path) -> None:
        """A finished run-folder file (metrics.json, config.yaml, ...); loggers that store files keep a copy."""

    def close(self) -> None:
        pass
