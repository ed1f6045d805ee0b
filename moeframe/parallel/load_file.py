"""Recorded expert loads on disk: the input of redundant-expert placement and of tools/simulate_ep.py.

Two forms are read: a load file ``{"counts": [[...], ...]}`` (tokens per
layer and expert, as ``ExpertLoadRecorder.load_counts`` returns them), or a
run's metrics.json, whose ``stats.expert_load.counts`` holds the same table.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from moeframe.errors import ConfigError


def read_expert_counts(path: str | Path) -> torch.Tensor:
    """[L, E] float64 tokens per (layer, expert)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"expert load file {path}: {err}") from None
    counts = raw.get("counts")
    if counts is None:
        counts = raw.get("stats", {}).get("expert_load", {}).get("counts")
    if not counts or not isinstance(counts, list) or not all(isinstance(row, list) for row in counts):
        raise ConfigError(f"expert load file {path}: no 'counts' (or 'stats.expert_load.counts') table of layers x experts")
    lengths = {len(row) for row in counts}
    if len(lengths) != 1:
        raise ConfigError(f"expert load file {path}: rows of 'counts' have different lengths {sorted(lengths)}")
    return torch.tensor(counts, dtype=torch.float64)


def write_expert_counts(counts: torch.Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps({"counts": counts.tolist()}))
    return path
