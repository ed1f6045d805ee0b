"""``python -m moeframe.serve``: Hydra overrides in, a serving process out; bad configs fail at start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from server_process import ServerProcess


def test_serve_cli_serves_the_configured_model(moeframe_cache: Path) -> None:
    server = ServerProcess(["model=tiny-qwen2-moe", "device=cpu", "server.model_name=cli-model"]).wait_ready()
    try:
        assert [m["id"] for m in httpx.get(f"{server.url}/v1/models").json()["data"]] == ["cli-model"]
        out = httpx.post(f"{server.url}/v1/completions", json={"model": "cli-model", "prompt": "Hi", "max_tokens": 3}).json()
        assert out["usage"]["completion_tokens"] <= 3
    finally:
        server.stop()


def test_serve_cli_rejects_an_unknown_component_at_start(moeframe_cache: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moeframe.serve", "router=no-such-router"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "router: unknown choice 'no-such-router'" in done.stderr and "native" in done.stderr
