"""Routes over HTTP: return_routed_experts through the openai client's extra_body, and the recorder's endpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from openai_server import MODEL, Served

from moeframe.api import Engine, SamplingParams
from moeframe.config import ServerConfig
from moeframe.server import build_app
from moeframe.server.background import BackgroundServer

ROUTES = {"return_routed_experts": True}


@pytest.fixture(scope="module")
def routed(moeframe_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    engine = Engine.from_overrides([f"model={MODEL}", "cache=none", "device=cpu", "runner.routes=true"])
    app = build_app(engine, MODEL, ServerConfig(run_dir=str(tmp_path_factory.mktemp("serve_run"))))
    with BackgroundServer(app) as server:
        yield Served(server.url, app.state.engine_loop)


@pytest.fixture(scope="module")
def client(routed: Served) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{routed.url}/v1", api_key="unused", max_retries=0)


def num_moe_layers(routed: Served) -> int:
    return routed.engine_loop.call(lambda e: sum(e.spec.sparse_layers)).result()


def test_streamed_chat_returns_routes_for_every_token(routed: Served, client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=8,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body=ROUTES,
    )  # fmt: skip
    routes, usage = [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            routes += (choice.model_extra or {}).get("routed_experts", [])
    computed = usage.prompt_tokens + usage.completion_tokens - 1  # the last token is never fed back
    assert len(routes) == computed
    tensor = torch.tensor(routes)
    assert tensor.dim() == 3 and tensor.shape[1] == num_moe_layers(routed)
    whole = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Name three colours."}], max_tokens=8, temperature=0,
        extra_body=ROUTES,
    )
    assert whole.choices[0].model_extra["routed_experts"] == routes


def test_completion_routes_are_the_engines(routed: Served, client: openai.OpenAI) -> None:
    out = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0, extra_body=ROUTES)
    params = SamplingParams(max_new_tokens=6, return_routed_experts=True)
    reference = routed.reference("The sky is", params)
    assert out.choices[0].model_extra["routed_experts"] == reference.routed_experts.tolist()
    plain = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=6, temperature=0)
    assert "routed_experts" not in (plain.choices[0].model_extra or {})


def test_recorder_endpoints_dump_the_served_routes(routed: Served, client: openai.OpenAI) -> None:
    url = routed.url
    assert httpx.post(f"{url}/start_expert_distribution_record", json={"mode": "per_token"}).json()["recording"]
    returned = []
    for prompt in ("One two three", "A quick brown fox", "Hello"):
        out = client.completions.create(model=MODEL, prompt=prompt, max_tokens=5, temperature=0, extra_body=ROUTES)
        returned.append(out.choices[0].model_extra["routed_experts"])
    assert httpx.post(f"{url}/stop_expert_distribution_record").status_code == 200
    dump = httpx.post(f"{url}/dump_expert_distribution_record").json()
    assert dump["mode"] == "per_token" and Path(dump["path"]).is_file()
    assert sorted(map(str, (e["routed_experts"] for e in dump["requests"]))) == sorted(map(str, returned))
    bad = httpx.post(f"{url}/start_expert_distribution_record", json={"mode": "everything"})
    assert bad.status_code == 400 and "valid choices" in bad.json()["error"]["message"]
