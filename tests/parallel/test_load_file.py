"""Recorded expert loads read from a counts file or from a run's metrics.json; bad files fail with ConfigError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from moeframe.errors import ConfigError
from moeframe.parallel.load_file import read_expert_counts, write_expert_counts


def test_counts_file_round_trips(tmp_path: Path) -> None:
    counts = torch.tensor([[0, 0, 0], [5, 1, 7]])
    assert torch.equal(read_expert_counts(write_expert_counts(counts, tmp_path / "c.json")), counts.double())


def test_counts_are_read_from_a_runs_metrics_json(tmp_path: Path) -> None:
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"metrics": {}, "stats": {"expert_load": {"counts": [[1, 2], [3, 4]]}}}))
    assert read_expert_counts(path).tolist() == [[1.0, 2.0], [3.0, 4.0]]


@pytest.mark.parametrize("content", ['{"metrics": {}}', '{"counts": [[1, 2], [3]]}', "not json"])
def test_bad_load_file_is_a_config_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="expert load file"):
        read_expert_counts(path)
