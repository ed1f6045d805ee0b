"""The FastAPI app over one Engine: OpenAI routes plus /health, /stats, /metrics, /v1/models, /model_info, /score,
and the expert-distribution recorder's start / stop / dump (expert_distribution_routes.py).

``build_app`` starts the engine thread; the app's lifespan stops it. The
app holds no engine state of its own: everything it reports comes from the
engine thread, between steps.

Around the routes, outermost first: ``CatchAll`` (an unexpected error is a
counted 500 on a connection that stays usable), ``BodyLimit`` (413 before a
large body is read), ``RequireAPIKey`` (401, when a key is set) and
``RefuseWhileDraining`` (503 once shutdown began). ``server`` holds the
limits and the key (``conf``'s ``server`` section).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from moeframe.api import Engine
from moeframe.config import ServerConfig
from moeframe.server.async_engine import AsyncEngine
from moeframe.server.auth import RequireAPIKey, resolve_api_key
from moeframe.server.body_limit import BodyLimit
from moeframe.server.chat_format import ChatFormat, end_of_turn_ids
from moeframe.server.engine_loop import EngineLoop
from moeframe.server.expert_distribution_routes import ExpertDistributionRoutes
from moeframe.server.errors import APIError, CatchAll, ErrorCounter, install_error_handlers
from moeframe.server.limits import RequestLimits
from moeframe.server.metrics import ServerMetrics, metrics_snapshot
from moeframe.server.openai_routes import OpenAIRoutes
from moeframe.server.protocol import ModelCard, ModelList, ScoreRequest, now_s
from moeframe.server.scoring import scored_inputs, token_logprobs_of
from moeframe.server.shutdown import GracefulShutdown, RefuseWhileDraining


def chat_format_of(engine: Engine) -> ChatFormat:
    tokenizer = engine.tokenizer
    if tokenizer is None:
        return ChatFormat(None)
    special = {k: getattr(tokenizer, k, None) or "" for k in ("bos_token", "eos_token")}
    return ChatFormat(getattr(tokenizer, "chat_template", None), special)


def run_dir(server: ServerConfig) -> Path:
    return Path(server.run_dir) if server.run_dir else Path("outputs/serve") / time.strftime("%Y-%m-%d_%H-%M-%S")


def build_app(engine: Engine, model_name: str, server: ServerConfig | None = None) -> FastAPI:
    server = server or ServerConfig()
    metrics = ServerMetrics()
    counter = ErrorCounter(metrics.rejected.inc, lambda status: metrics.server_errors.labels(str(status)).inc())
    chat = chat_format_of(engine)
    end_of_turn = end_of_turn_ids(chat, engine.tokenizer)
    engine_loop = EngineLoop(
        engine,
        on_finish=metrics.observe_finished,
        max_waiting=server.max_waiting_requests,
        admission_threads=server.admission_threads,
    )
    async_engine = AsyncEngine(engine_loop)
    limits = RequestLimits.of(server)
    shutdown = GracefulShutdown(engine_loop, server.shutdown_grace_s)
    created = now_s()

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        shutdown.loop = asyncio.get_running_loop()
        yield
        engine_loop.close()

    app = FastAPI(title="moeframe", lifespan=lifespan)
    app.state.engine_loop = engine_loop
    app.state.shutdown = shutdown
    install_error_handlers(app, counter)
    app.add_middleware(RefuseWhileDraining, shutdown=shutdown, counter=counter)
    api_key = resolve_api_key(server.api_key)
    if api_key is not None:
        app.add_middleware(RequireAPIKey, api_key=api_key, counter=counter)
    app.add_middleware(BodyLimit, max_bytes=server.max_body_bytes, counter=counter)
    app.add_middleware(CatchAll, counter=counter)
    app.include_router(OpenAIRoutes(async_engine, model_name, chat, end_of_turn, limits).router)
    app.include_router(ExpertDistributionRoutes(async_engine, run_dir(server)).router)

    @app.get("/health")
    async def health() -> dict[str, str]:
        """503 once the engine thread stopped or shutdown began, so a load balancer sends no more requests here."""
        if not engine_loop.alive:
            raise APIError("the engine thread has stopped", 503, "server_error")
        if shutdown.draining:
            raise APIError("the server is shutting down", 503, "server_error")
        return {"status": "ok"}

    @app.get("/stats")
    async def stats() -> JSONResponse:
        return JSONResponse(await async_engine.call(lambda e: e.stats()))

    @app.get("/metrics")
    async def prometheus() -> Response:
        snapshot = await async_engine.call(metrics_snapshot)
        return Response(metrics.render(snapshot), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models() -> ModelList:
        return ModelList(data=[ModelCard(id=model_name, created=created, max_model_len=engine.built.max_context)])

    @app.get("/model_info")
    async def model_info() -> dict[str, Any]:
        """What the DSL's server backend needs to format chat turns as this server does."""
        return {
            "model": model_name,
            "max_context": engine.built.max_context,
            "chat_template": chat.template_source,
            "end_of_turn_token_ids": end_of_turn,
        }

    @app.post("/score")
    async def score(body: ScoreRequest) -> dict[str, Any]:
        """Tokenized off the engine thread; one forward per continuation, so streams step between them."""
        limits.score(body)
        inputs = await async_engine.off_loop(lambda e: scored_inputs(e, body.prompt, body.continuations))
        logprobs = []
        for full, start in inputs:
            logprobs.append(await async_engine.call(lambda e, full=full, start=start: token_logprobs_of(e, full, start)))
        return {"logprobs": logprobs}

    return app
