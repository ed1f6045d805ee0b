"""router=replay: route each token by recorded routes, natively where none are given.

The routes come per request (``SamplingParams(replay_routes=...)``) or from a
routes file (``router.routes_file``), both in the layout ``routed_experts``
returns: [tokens, MoE layers, k] expert ids, token i of the request's
prompt-then-output sequence routed by row i. This is routing replay as "R3"
(arXiv 2510.11370) uses it between an inference engine and a trainer, and
as vLLM and SGLang's ``return_routed_experts`` feed it: the ids are
followed, while the weights are computed from this run's gate logits by the
checkpoint's own formula (the score of each given expert, normalised over
the token's experts when the checkpoint normalises, times its scaling), so
replaying native's own routes reproduces native's plan. A -1 in a given row
drops that assignment; a token with no given row (all -1, or past the given
routes) is routed natively. Rows of other widths than the checkpoint's
top_k are padded with -1 columns to one plan width.

A routes file is JSON lines, each with ``prompt_ids`` and ``routed_experts``
(a run's outputs.jsonl with ``runner.routes=true`` is one); a request whose
prompt equals a line's ``prompt_ids`` replays that line's routes, unless it
gives its own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from moeframe.model.spec import MoESpec
from moeframe.registry import NoParams
from moeframe.routers import ROUTERS
from moeframe.routers.base import RouteContext, Router
from moeframe.routers.native import NativeRouter, grouped
from moeframe.routers.plan import RoutingPlan


@dataclass(frozen=True)
class ReplayParams:
    routes_file: str | None = None  # JSON lines of prompt_ids and routed_experts

    def __post_init__(self) -> None:
        if self.routes_file is not None and not Path(self.routes_file).is_file():
            raise ValueError(f"routes_file={self.routes_file}: no such file")


def given_weights(gate_logits: torch.Tensor, ids: torch.Tensor, moe: MoESpec) -> torch.Tensor:
    """The checkpoint's weights [T, k] of the experts ``ids`` (-1: dropped, weight 0), op for op as native's."""
    logits = gate_logits.float()
    scores = logits.sigmoid() if moe.scoring == "sigmoid" else torch.softmax(logits, dim=-1)
    kept = ids >= 0
    weights = scores.gather(1, ids.clamp_min(0)) * kept
    if moe.norm_topk_prob:
        total = weights.sum(dim=-1, keepdim=True)
        weights = weights / (total + 1e-20 if grouped(moe) else total.clamp_min(torch.finfo(torch.float32).tiny))
    return weights * moe.routed_scaling_factor


def widen(plan_ids: torch.Tensor, width: int, fill: float) -> torch.Tensor:
    pad = width - plan_ids.shape[1]
    return plan_ids if pad == 0 else torch.nn.functional.pad(plan_ids, (0, pad), value=fill)


@ROUTERS.register("replay", params=ReplayParams)
class ReplayRouter(Router):
    replays_routes = True

    def __init__(self, params: ReplayParams, *, moe: MoESpec, layer_idx: int, **_: object) -> None:
        self.moe = moe
        self.native = NativeRouter(NoParams(), moe=moe, layer_idx=layer_idx)
        self.routes_file = params.routes_file

    def route(self, gate_logits: torch.Tensor, ctx: RouteContext) -> RoutingPlan:
        plan = self.native.route(gate_logits, ctx)
        given = ctx.replay_ids
        if given is None:
            return plan
        given = given.to(plan.topk_ids.device)
        width = max(given.shape[1], plan.topk_ids.shape[1])
        has_row = (given >= 0).any(dim=1, keepdim=True)
        ids = torch.where(has_row, widen(given, width, -1), widen(plan.topk_ids, width, -1))
        weights = given_weights(gate_logits, widen(given, width, -1), self.moe)
        weights = torch.where(has_row, weights, widen(plan.topk_weights, width, 0.0))
        return RoutingPlan(topk_ids=ids, topk_weights=weights)


class RoutesFile:
    """The routes of a routes file, by prompt."""

    def __init__(self, path: str | Path) -> None:
        self.by_prompt: dict[tuple[int, ...], torch.Tensor] = {}
        with Path(path).open(encoding="utf-8") as lines:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if "prompt_ids" not in record or "routed_experts" not in record:
                    raise ValueError(f"{path}:{number}: a routes line needs prompt_ids and routed_experts")
                self.by_prompt[tuple(record["prompt_ids"])] = torch.tensor(record["routed_experts"], dtype=torch.int64)

    def lookup(self, prompt_ids: list[int]) -> torch.Tensor | None:
        return self.by_prompt.get(tuple(prompt_ids))
