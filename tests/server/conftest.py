"""One real server per session: a tiny MoE model on CPU behind uvicorn on 127.0.0.1, a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai_server import MODEL, Served

from moeframe.api import Engine
from moeframe.server import build_app
from moeframe.server.background import BackgroundServer


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
