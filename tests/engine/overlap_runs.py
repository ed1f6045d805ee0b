"""Driving an engine through planned arrivals and aborts, step by step, for the overlapped-decode tests."""

from __future__ import annotations

from dataclasses import dataclass, field

from moeframe import Engine, SamplingParams
from moeframe.engine.request import PLACEHOLDER_ID, Request


@dataclass
class Planned:
    prompt: list[int]
    params: SamplingParams
    arrival_step: int  # added before the engine's step of this index
    abort_after: int | None = None  # aborted once it holds this many output tokens


@dataclass
class Run:
    engine: Engine
    requests: list[Request] = field(default_factory=list)

    def results(self) -> list[tuple[list[int], str, str | None]]:
        return [(r.output_ids, r.text, r.finish_reason) for r in self.requests]


def assert_no_placeholders(requests: list[Request]) -> None:
    for req in requests:
        assert req.num_placeholders == 0 and PLACEHOLDER_ID not in req.output_ids


def drive(engine: Engine, plan: list[Planned]) -> Run:
    """Step the engine through the plan; between steps, no request may hold a placeholder."""
    run = Run(engine)
    waiting = sorted(plan, key=lambda p: p.arrival_step)
    aborts: dict[int, int] = {}
    step = 0
    while waiting or engine.core.has_work():
        while waiting and waiting[0].arrival_step <= step:
            planned = waiting.pop(0)
            req = engine.add_request(planned.prompt, SamplingParams(**vars(planned.params)))
            run.requests.append(req)
            if planned.abort_after is not None:
                aborts[req.rid] = planned.abort_after
        engine.step()
        step += 1
        for req in run.requests:
            if not req.is_finished and len(req.output_ids) >= aborts.get(req.rid, 1 << 30):
                engine.core.abort(req.rid)
        assert_no_placeholders(run.requests)
    return run
