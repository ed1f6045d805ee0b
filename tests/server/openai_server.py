"""The session server's handle and checks shared by the server tests (a module name no other test folder uses)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import httpx

from moeframe.api import SamplingParams
from moeframe.engine.request import GenerateOutput
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


def assert_no_leaked_slots(stats: dict[str, Any]) -> None:
    """Idle engine: every slot is free or held by the prefix cache for reuse (none by a request)."""
    assert stats["num_running"] == 0 and stats["num_waiting"] == 0
    assert stats["num_free_slots"] + stats["num_cached_tokens"] == stats["num_slots"]
