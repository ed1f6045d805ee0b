"""One real server per session: a tiny MoE model on CPU behind uvicorn on 127.0.0.1, a free port."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from moeframe.api import Engine, SamplingParams
from moeframe.engine.request import GenerateOutput
from moeframe.server import build_app
from moeframe.server.background import BackgroundServer
from moeframe.server.engine_loop import EngineLoop

MODEL = "tiny-qwen2-moe"


@dataclass
class Served:
    url: str
    engine_loop: EngineLoop

    def reference(self, prompt: str, params: SamplingParams) -> GenerateOutput:
        """The engine's own answer, run directly on the engine thread (no HTTP, no streaming)."""
        return self.engine_loop.call(lambda e: e.generate([prompt], params)[0]).result()

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.url}/stats").json()

    def wait_idle(self, timeout_s: float = 10.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.stats()
            if (stats["num_running"] == 0 and stats["num_waiting"] == 0) or time.monotonic() > deadline:
                return stats


@pytest.fixture(scope="session")
def served(moeframe_cache: Path) -> Iterator[Served]:
    engine = Engine.from_overrides([f"model={MODEL}", "cache=radix", "device=cpu", "cache.max_tokens=8192"])
    app = build_app(engine, MODEL)
    with BackgroundServer(app) as server:
        yield Served(server.url, app.state.engine_loop)


@pytest.fixture(scope="session")
def client(served: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="session")
def async_client(served: Served) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)


def assert_no_leaked_slots(stats: dict[str, Any]) -> None:
    """Idle engine: every slot is free or held by the prefix cache for reuse (none by a request)."""
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_free_slots"] + stats["num_cached_tokens"] == stats["num_slots"]
