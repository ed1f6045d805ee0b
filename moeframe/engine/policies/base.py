"""A scheduling policy orders the waiting queue and picks whom to preempt; the batch limits every policy shares are its params."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from moeframe.cache.base import KVCache
from moeframe.engine.request import Request


@dataclass
class SchedulerParams:
    chunk_size: int = 512  # prompt tokens one request may prefill in one step (chunked prefill)
    max_batch_tokens: int = 2048  # new tokens in one forward step, all requests together
    max_running: int = 128  # requests decoding together

    def __post_init__(self) -> None:
        for key in ("chunk_size", "max_batch_tokens", "max_running"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


class SchedulingPolicy(ABC):
    def __init__(self, params: SchedulerParams) -> None:
        self.params = params

    @abstractmethod
    def order(self, waiting: list[Request], cache: KVCache) -> list[Request]:
        """The waiting requests in the order they should be admitted."""

    def victim(self, running: list[Request]) -> Request:
        """The running request to preempt when another cannot grow: the newest (vLLM's recompute preemption)."""
        return max(running, key=lambda r: (r.arrival_s, r.rid))
