"""Expert-distribution recording by mode, started and stopped at will (SGLang's expert-distribution recorder).

Three modes, as SGLang's ``--expert-distribution-recorder-mode``:

- ``stat``: kept assignments per (MoE layer, expert) over the recording:
  counted from each served step's routes when the engine records them, else
  the running total of the expert-load recorder (telemetry/expert_load.py)
  taken between start and stop, which under CUDA-graph decode also counts
  the padding rows of a batch padded to a captured size.
- ``per_pass``: per forward pass, its counts per (MoE layer, expert) and its
  batch composition: prefill, decode or mixed, its tokens and how many of
  them were prompt (prefill) or generated (decode) tokens, its requests.
- ``per_token``: the routes [tokens, MoE layers, k] of every token computed,
  by request and position.

Only served passes count: the engine feeds ``on_pass`` from its steps alone,
and scoring and warm-up passes are counted apart by the expert-load
recorder. ``per_pass`` and ``per_token`` read each step's routes, so they
need an engine that records them (``runner.routes=true``). A token
recomputed after preemption keeps its last routes in ``per_token`` and
counts again in ``per_pass``, as it ran again; a cached prefix is not
computed, so it is in neither.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from moeframe.errors import RequestError
from moeframe.telemetry.expert_load import ExpertLoadRecorder

MODES = ("stat", "per_pass", "per_token")


def layer_counts(rows: np.ndarray, num_experts: int) -> np.ndarray:
    """Kept assignments [L, E] of one step's routes [T, L, k] (-1: dropped)."""
    counts = np.zeros((rows.shape[1], num_experts), dtype=np.int64)
    for layer in range(rows.shape[1]):
        kept = rows[:, layer][rows[:, layer] >= 0]
        counts[layer] = np.bincount(kept, minlength=num_experts)
    return counts


class ExpertDistributionRecorder:
    def __init__(self, load: ExpertLoadRecorder | None, moe_layers: list[int], num_experts: int, records_routes: bool) -> None:
        self.load, self.moe_layers, self.num_experts = load, moe_layers, num_experts
        self.records_routes = records_routes
        self.mode: str | None = None
        self.recording = False
        self.start_counts: torch.Tensor | None = None  # stat from the expert-load totals: at start
        self.stat_counts: torch.Tensor | None = None  # [MoE layers, E]: counted from routes, or the totals' difference at stop
        self.passes: list[dict[str, Any]] = []
        self.tokens: dict[int, dict[int, np.ndarray]] = {}  # request id -> position -> routes [L, k]
        self.num_dumps = 0

    @property
    def wants_routes(self) -> bool:
        """Whether the engine should hand over each step's routes now."""
        return self.recording and (self.mode != "stat" or self.records_routes)

    def start(self, mode: str) -> None:
        if mode not in MODES:
            raise RequestError(f"mode '{mode}': valid choices are {', '.join(MODES)}")
        if mode != "stat" and not self.records_routes:
            raise RequestError(f"mode '{mode}' reads each step's routes: start the engine with runner.routes=true")
        if mode == "stat" and self.load is None:
            raise RequestError("this model has no MoE layers to count")
        self.mode, self.recording = mode, True
        self.passes, self.tokens, self.stat_counts = [], {}, None
        self.start_counts = None
        if mode == "stat":
            if self.records_routes:
                self.stat_counts = torch.zeros(len(self.moe_layers), self.num_experts, dtype=torch.long)
            else:
                self.start_counts = self._served_counts()

    def stop(self) -> None:
        if not self.recording:
            raise RequestError("no expert-distribution recording is running")
        if self.mode == "stat" and self.start_counts is not None:
            self.stat_counts = self._served_counts() - self.start_counts
        self.recording = False

    def _served_counts(self) -> torch.Tensor:
        return self.load.load_counts()[self.moe_layers]

    def on_pass(self, requests: list[Any], starts: list[int], lengths: list[int], ids: torch.Tensor) -> None:
        """One served step: its requests, the position of each one's first token and its token count, routes [T, L, k]."""
        rows = ids.numpy().copy()  # the host buffer is the next step's too
        if self.mode == "stat":
            self.stat_counts += torch.from_numpy(layer_counts(rows, self.num_experts))
            return
        if self.mode == "per_pass":
            prompt_tokens = sum(max(0, min(s + n, len(r.prompt_ids)) - s) for r, s, n in zip(requests, starts, lengths))
            total = rows.shape[0]
            kind = "decode" if prompt_tokens == 0 else "prefill" if prompt_tokens == total else "mixed"
            counts = layer_counts(rows, self.num_experts)
            self.passes.append({
                "pass": len(self.passes), "kind": kind, "tokens": total, "prefill_tokens": prompt_tokens,
                "decode_tokens": total - prompt_tokens, "requests": len(requests), "counts": counts.tolist(),
            })  # fmt: skip
            return
        row = 0
        for req, start, n in zip(requests, starts, lengths):
            positions = self.tokens.setdefault(req.rid, {})
            for i in range(n):
                positions[start + i] = rows[row + i]
            row += n

    def dump(self, folder: Path | None = None) -> dict[str, Any]:
        """What was recorded (the recording goes on if it runs), also written as JSON into ``folder`` when given."""
        body: dict[str, Any] = {"mode": self.mode, "recording": self.recording, "moe_layers": self.moe_layers}
        if self.mode == "stat":
            live = self.recording and self.start_counts is not None
            counts = self._served_counts() - self.start_counts if live else self.stat_counts
            body["counts"] = None if counts is None else counts.tolist()
        elif self.mode == "per_pass":
            body["passes"] = list(self.passes)
        elif self.mode == "per_token":
            body["requests"] = [
                {"request_id": rid, "positions": sorted(positions), "routed_experts": [positions[p].tolist() for p in sorted(positions)]}
                for rid, positions in sorted(self.tokens.items())
            ]
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"expert_distribution_{self.num_dumps:03d}_{self.mode}.json"
            path.write_text(json.dumps(body))
            body["path"] = str(path)
        self.num_dumps += 1
        return body
