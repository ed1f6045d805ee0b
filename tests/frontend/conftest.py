"""The DSL's two backends over the same tiny model (radix cache, CPU): in-process, and a real server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from moeframe.api import Engine
from moeframe.frontend import EngineBackend, ServerBackend
from moeframe.server import build_app
from moeframe.server.background import BackgroundServer

OVERRIDES = ["model=tiny-qwen2-moe", "cache=radix", "device=cpu", "cache.max_tokens=8192"]


@pytest.fixture(scope="session")
def engine_backend(moeframe_cache: Path) -> Iterator[EngineBackend]:
    backend = EngineBackend(Engine.from_overrides(OVERRIDES))
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def server_backend(moeframe_cache: Path) -> Iterator[ServerBackend]:
    app = build_app(Engine.from_overrides(OVERRIDES), "tiny-qwen2-moe")
    with BackgroundServer(app) as server:
        backend = ServerBackend(server.url)
        yield backend
        backend.close()


@pytest.fixture(params=["engine", "server"])
def backend(request: pytest.FixtureRequest) -> EngineBackend | ServerBackend:
    return request.getfixturevalue(f"{request.param}_backend")
