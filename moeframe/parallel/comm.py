"""The collectives the strategies run, each counted: bytes moved, calls and seconds spent.

Every collective goes through a ``Comm`` so the engine can report the
all-to-all volume per step and the share of forward time spent
communicating (the numbers DeepSeek-V3's and SGLang's EP write-ups tune).
On CUDA the timer synchronises around each collective, since NCCL calls
return before the transfer ends; ``time_comm=false`` drops the syncs (and the
time figures) for runs where they would distort speed.
"""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager

import torch
import torch.distributed as dist


class CommMeter:
    """Counters shared by the Comms of one strategy (its TP and EP groups report together)."""

    def __init__(self, time_comm: bool = True) -> None:
        self.time_comm = time_comm
        self.bytes_sent: dict[str, int] = defaultdict(int)
        self.calls: dict[str, int] = defaultdict(int)
        self.seconds: dict[str, float] = defaultdict(float)

    def summary(self) -> dict:
        return {
            "bytes_sent": dict(self.bytes_sent),
            "calls": dict(self.calls),
            "seconds": dict(self.seconds) if self.time_comm else None,
        }


class Comm:
    """Collectives over one process group (None: the default group), counted in ``meter``."""

    def __init__(self, group: dist.ProcessGroup | None = None, meter: CommMeter | None = None) -> None:
        self.group = group
        self.meter = meter or CommMeter()
        grouped = dist.is_available() and dist.is_initialized()
        self.world_size = dist.get_world_size(group) if grouped else 1
        self.rank = dist.get_rank(group) if grouped else 0

    @contextmanager
    def _timed(self, kind: str, tensor: torch.Tensor):
        meter = self.meter
        sync = meter.time_comm and tensor.is_cuda
        if sync:
            torch.cuda.synchronize(tensor.device)
        start = time.perf_counter()
        yield
        if sync:
            torch.cuda.synchronize(tensor.device)
        if meter.time_comm:
            meter.seconds[kind] += time.perf_counter() - start
        meter.calls[kind] += 1

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over ranks, in place; a ring all-reduce sends 2(W-1)/W of the tensor per rank."""
        if self.world_size == 1:
            return tensor
        with self._timed("all_reduce", tensor):
            dist.all_reduce(tensor, group=self.group)
        self.meter.bytes_sent["all_reduce"] += 2 * (self.world_size - 1) * tensor.numel() * tensor.element_size() // self.world_size
        return tensor

    def all_to_all(self, tensor: torch.Tensor, send_splits: list[int], recv_splits: list[int], kind: str = "all_to_all") -> torch.Tensor:
        """Rows ``send_splits[d]`` of ``tensor`` go to rank d; rows from rank s arrive in ``recv_splits[s]``."""
        if self.world_size == 1:
            return tensor
        out = tensor.new_empty((sum(recv_splits), *tensor.shape[1:]))
        with self._timed(kind, tensor):
            dist.all_to_all_single(out, tensor.contiguous(), output_split_sizes=recv_splits, input_split_sizes=send_splits, group=self.group)
        row_bytes = tensor[0:1].numel() * tensor.element_size() if tensor.dim() > 1 else tensor.element_size()
        self.meter.bytes_sent[kind] += (sum(send_splits) - send_splits[self.rank]) * row_bytes
        return out

    def all_gather_rows(self, tensor: torch.Tensor, rows_per_rank: list[int]) -> torch.Tensor:
        """Concatenate each rank's rows (``rows_per_rank[r]`` of them) on every rank."""
        if self.world_size == 1:
            return tensor
        width = max(rows_per_rank)
        padded = tensor.new_zeros((width, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in rows_per_rank]
        with self._timed("all_gather", tensor):
            dist.all_gather(parts, padded, group=self.group)
        self.meter.bytes_sent["all_gather"] += (self.world_size - 1) * padded.numel() * padded.element_size()
        return torch.cat([p[:n] for p, n in zip(parts, rows_per_rank)])

    def send_async(self, tensor: torch.Tensor, dst: int) -> dist.Work:
        """Start sending ``tensor`` to global rank ``dst`` (a pipeline stage's output); counted, never timed: it overlaps compute."""
        self.meter.bytes_sent["p2p"] += tensor.numel() * tensor.element_size()
        self.meter.calls["p2p"] += 1
        return dist.isend(tensor.contiguous(), dst, group=self.group)

    def recv_async(self, tensor: torch.Tensor, src: int) -> dist.Work:
        """Post a receive into ``tensor`` from global rank ``src``; the sender counts the bytes."""
        return dist.irecv(tensor, src, group=self.group)

    def broadcast(self, tensor: torch.Tensor, src: int) -> torch.Tensor:
        """``tensor`` from global rank ``src`` on every rank, in place; the source sends it to each of the W-1 others."""
        if self.world_size == 1:
            return tensor
        with self._timed("broadcast", tensor):
            dist.broadcast(tensor, src, group=self.group)
        if dist.get_rank() == src:
            self.meter.bytes_sent["broadcast"] += (self.world_size - 1) * tensor.numel() * tensor.element_size()
        return tensor
