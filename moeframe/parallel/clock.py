"""Forward steps and their wall time, so communication can be reported as a share of it.

Attached as forward hooks on the model: telemetry only, the forward itself is
unchanged. On CUDA the end of a step is taken after a synchronise when
communication is being timed (``Comm.time_comm``), so both clocks agree.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from moeframe.parallel.comm import CommMeter


class ForwardClock:
    def __init__(self, sync_cuda: bool) -> None:
        self.sync_cuda = sync_cuda
        self.steps = 0
        self.seconds = 0.0
        self._start = 0.0

    def attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(lambda *_: self._begin())
        model.register_forward_hook(lambda _m, _i, out: self._end(out))

    def _begin(self) -> None:
        self._start = time.perf_counter()

    def _end(self, out: torch.Tensor) -> None:
        if self.sync_cuda and out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.steps += 1
        self.seconds += time.perf_counter() - self._start


def comm_stats(meter: CommMeter, clock: ForwardClock) -> dict[str, Any]:
    """Bytes this rank sent per collective kind, per forward step, and the share of forward time spent in collectives."""
    summary = meter.summary()
    steps = max(clock.steps, 1)
    out: dict[str, Any] = {
        "forward_steps": clock.steps,
        "bytes_sent": summary["bytes_sent"],
        "bytes_sent_per_step": {k: v / steps for k, v in summary["bytes_sent"].items()},
        "collective_calls": summary["calls"],
    }
    if summary["seconds"] is not None:
        comm_s = sum(summary["seconds"].values())
        out["comm_seconds"] = comm_s
        out["forward_seconds"] = clock.seconds
        out["comm_time_share"] = comm_s / clock.seconds if clock.seconds > 0 else 0.0
    return out
