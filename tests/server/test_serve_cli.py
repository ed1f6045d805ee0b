"""``python -m moeframe.serve``: Hydra overrides in, a serving process out; bad configs fail at start."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_cli_serves_the_configured_model(moeframe_cache: Path) -> None:
    port = free_port()
    args = ["model=tiny-qwen2-moe", "device=cpu", "server.host=127.0.0.1", f"server.port={port}", "server.model_name=cli-model"]
    proc = subprocess.Popen([sys.executable, "-m", "moeframe.serve", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not come up: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.2)
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["cli-model"]
        out = httpx.post(f"{url}/v1/completions", json={"model": "cli-model", "prompt": "Hi", "max_tokens": 3}).json()
        assert out["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_cli_rejects_an_unknown_component_at_start(moeframe_cache: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "moeframe.serve", "router=no-such-router"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "router: unknown choice 'no-such-router'" in done.stderr and "native" in done.stderr
