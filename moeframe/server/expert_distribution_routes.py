"""Expert-distribution recording over HTTP: start (by mode), stop, dump, as SGLang's endpoints of the same names.

    POST /start_expert_distribution_record   {"mode": "stat" | "per_pass" | "per_token"}  (default stat)
    POST /stop_expert_distribution_record
    POST /dump_expert_distribution_record    -> the recording as JSON, also written into the run folder

Each runs on the engine thread between steps, so a recording holds whole
steps only (telemetry/expert_distribution.py says what each mode records).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from moeframe.api import Engine
from moeframe.errors import RequestError
from moeframe.server.async_engine import AsyncEngine
from moeframe.server.errors import APIError


class StartRecord(BaseModel):
    mode: str = "stat"


class ExpertDistributionRoutes:
    def __init__(self, engine: AsyncEngine, run_dir: Path) -> None:
        self.engine, self.run_dir = engine, run_dir
        self.router = APIRouter()
        self.router.add_api_route("/start_expert_distribution_record", self.start, methods=["POST"])
        self.router.add_api_route("/stop_expert_distribution_record", self.stop, methods=["POST"])
        self.router.add_api_route("/dump_expert_distribution_record", self.dump, methods=["POST"])

    async def start(self, body: StartRecord | None = None) -> dict[str, Any]:
        mode = (body or StartRecord()).mode
        await self.on_recorder(lambda recorder: recorder.start(mode))
        return {"recording": True, "mode": mode}

    async def stop(self) -> dict[str, Any]:
        await self.on_recorder(lambda recorder: recorder.stop())
        return {"recording": False}

    async def dump(self) -> dict[str, Any]:
        return await self.on_recorder(lambda recorder: recorder.dump(self.run_dir))

    async def on_recorder(self, fn: Any) -> Any:
        def run(engine: Engine) -> Any:
            recorder = engine.core.distribution
            if recorder is None:
                raise RequestError("this model has no MoE layers, so no expert distribution to record")
            return fn(recorder)

        try:
            return await self.engine.call(run)
        except RequestError as err:
            raise APIError(str(err)) from None
