"""logger=jsonl: metrics and events as JSON lines in the run folder (the default; no service needed)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from moeframe.registry import NoParams
from moeframe.telemetry.loggers import LOGGERS
from moeframe.telemetry.loggers.base import RunLogger


@LOGGERS.register("jsonl")
class JsonlLogger(RunLogger):
    def __init__(self, params: NoParams, run_dir: Path, **_: object) -> None:
        super().__init__(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(run_dir / "events.jsonl", "a", encoding="utf-8")

    def _write(self, kind: str, payload: dict[str, Any]) -> None:
        self._file.write(json.dumps({"t": time.time(), "kind": kind, **payload}, default=str) + "\n")
        self._file.flush()

    def log_config(self, config: dict[str, Any]) -> None:
        self._write("config", {"config": config})

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        self._write("metrics", {"step": step, "metrics": metrics})

    def log_image(self, name: str, path: Path) -> None:
        self._write("image", {"name": name, "path": str(path)})

    def log_table(self, name: str, columns: list[str], rows: list[list[Any]]) -> None:
        self._write("table", {"name": name, "columns": columns, "rows": rows})

    def log_file(self, path: Path) -> None:
        self._write("file", {"path": str(path)})

    def close(self) -> None:
        self._file.close()
