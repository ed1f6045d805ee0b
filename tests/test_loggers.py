"""The run loggers: jsonl (the default) and wandb (offline here: no network, no API key)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from moeframe.errors import ConfigError
from moeframe.telemetry.loggers import LOGGERS
from moeframe.telemetry.loggers.wandb import resolve_mode


@pytest.fixture
def offline_wandb(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No key, and W&B's own settings and caches kept inside the test's folder."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / var.lower()))
    yield


def heatmap(path: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (8, 4), (10, 200, 30)).save(path)
    return path


def test_jsonl_logger_writes_one_event_per_call(tmp_path: Path) -> None:
    logger = LOGGERS.build({"name": "jsonl"}, run_dir=tmp_path)
    logger.log_config({"router": {"name": "top_k", "k": 2}})
    logger.log_metrics({"throughput_tok_s": 12.5}, step=3)
    logger.log_table("requests", ["id", "tokens"], [[0, 4], [1, 5]])
    logger.log_image("expert_load", tmp_path / "x.png")
    logger.log_file(tmp_path / "metrics.json")
    logger.close()
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["config", "metrics", "table", "image", "file"]
    assert events[0]["config"]["router"]["k"] == 2
    assert events[1]["metrics"] == {"throughput_tok_s": 12.5} and events[1]["step"] == 3
    assert events[2]["rows"] == [[0, 4], [1, 5]] and events[2]["columns"] == ["id", "tokens"]
    assert events[3]["path"] == str(tmp_path / "x.png")


def test_wandb_auto_mode_is_offline_without_an_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    assert resolve_mode("offline") == "offline"


def test_wandb_rejects_an_unknown_mode_listing_the_choices() -> None:
    with pytest.raises(ConfigError, match="valid choices: auto, offline, online, disabled"):
        LOGGERS.parse_params({"name": "wandb", "mode": "cloud"})


def test_wandb_offline_run_holds_config_metrics_image_table_and_files(tmp_path: Path, offline_wandb: None) -> None:
    run_dir = tmp_path / "run"
    logger = LOGGERS.build(
        {"name": "wandb", "mode": "auto", "project": "tests", "tags": ["t1"]}, run_dir=run_dir, run_name="router=top1", group="sweep-a"
    )
    run = logger.run
    assert (run.offline, run.name, run.group, tuple(run.tags)) == (True, "router=top1", "sweep-a", ("t1",))
    logger.log_config({"router": {"name": "top_k", "k": 1}})
    logger.log_metrics({"throughput_tok_s": 7.0, "nested": {"skipped": 1}})
    logger.log_image("expert_load", heatmap(run_dir / "expert_load.png"))
    logger.log_table("requests", ["id", "tokens"], [[0, 4], [1, 5]])
    (run_dir / "metrics.json").write_text('{"metrics": {"throughput_tok_s": 7.0}}')
    logger.log_file(run_dir / "metrics.json")
    assert dict(run.config)["router"] == {"name": "top_k", "k": 1}
    assert run.summary["throughput_tok_s"] == 7.0 and "nested" not in dict(run.summary)
    logger.close()

    [offline] = list((run_dir / "wandb").glob("offline-run-*"))
    files = offline / "files"
    assert (files / "moeframe" / "metrics.json").read_text() == (run_dir / "metrics.json").read_text()
    assert len(list(files.glob("media/images/expert_load_*.png"))) == 1
    [table] = list(files.glob("media/table/requests_*.table.json"))
    stored = json.loads(table.read_text())
    assert stored["columns"] == ["id", "tokens"] and stored["data"] == [[0, 4], [1, 5]]
    assert list(offline.glob("run-*.wandb"))


def test_wandb_dir_param_moves_the_runs_out_of_the_run_folder(tmp_path: Path, offline_wandb: None) -> None:
    logger = LOGGERS.build({"name": "wandb", "mode": "offline", "dir": str(tmp_path / "elsewhere")}, run_dir=tmp_path / "run")
    logger.close()
    assert list((tmp_path / "elsewhere" / "wandb").glob("offline-run-*"))
    assert not (tmp_path / "run" / "wandb").exists()


def test_wandb_disabled_mode_writes_no_run(tmp_path: Path, offline_wandb: None) -> None:
    logger = LOGGERS.build({"name": "wandb", "mode": "disabled"}, run_dir=tmp_path)
    logger.log_metrics({"throughput_tok_s": 1.0})
    (tmp_path / "metrics.json").write_text("{}")
    logger.log_file(tmp_path / "metrics.json")
    logger.close()
    assert not (tmp_path / "wandb").exists()
