"""One request's life in the engine: its tokens, its KV slots, its timings, its result."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from moeframe.cache.base import PrefixMatch
from moeframe.engine.detokenizer import DetokenizeState
from moeframe.engine.sampling_params import SamplingParams
from moeframe.engine.slot_array import SlotArray


# Stands in output_ids for a token still on the device while the next step is scheduled (overlapped decode).
PLACEHOLDER_ID = -1


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class GenerateOutput:
    request_id: int
    token_ids: list[int]  # generated tokens only
    text: str
    finish_reason: str  # "stop" | "length" | "abort" | "error"
    cached_tokens: int  # prompt tokens served from the cache
    prompt_tokens: int
    logprobs: list[dict[str, Any]] | None = None
    error: str | None = None
    ttft_s: float | None = None
    latency_s: float | None = None
    # SamplingParams.return_routed_experts: [tokens, MoE layers, k] expert ids (int32) of every token the
    # model computed, in order: the prompt, then each generated token but the last (no step reads it);
    # the weights beside them when the engine records them (runner.routes_weights)
    routed_experts: torch.Tensor | None = None
    routed_expert_weights: torch.Tensor | None = None


@dataclass(eq=False)  # requests are compared by identity: queues test membership often
class Request:
    rid: int
    prompt_ids: list[int]
    params: SamplingParams
    output_ids: list[int] = field(default_factory=list)
    # slots[i] holds the KV of all_ids[i]; len(slots) tokens are computed. Grown in place by
    # extend; any other change assigns a new list (slot_array mirrors it on that understanding).
    slots: list[int] = field(default_factory=list)
    match: PrefixMatch = field(default_factory=PrefixMatch)
    cached_tokens: int | None = None
    status: Status = Status.WAITING
    finish_reason: str | None = None
    error: str | None = None
    constraint: Any = None  # a ConstraintState, or None
    generator: torch.Generator | None = None
    logprobs: list[dict[str, Any]] = field(default_factory=list)
    text: str = ""  # detokenize(output_ids), cut at a stop string
    arrival_s: float = field(default_factory=time.perf_counter)
    first_token_s: float | None = None
    token_times_s: list[float] = field(default_factory=list)
    finished_s: float | None = None
    num_preemptions: int = 0
    replay_ids: torch.Tensor | None = None  # [n, L, k] int64 routes to follow (router=replay), from SamplingParams
    routed_experts: torch.Tensor | None = None  # set when it ends, if asked for
    routed_expert_weights: torch.Tensor | None = None
    # Trailing output_ids that are PLACEHOLDER_ID: tokens being computed when the next step was
    # scheduled (vLLM v1's num_output_placeholders). Only within one engine step, 0 between steps.
    num_placeholders: int = 0
    # Host-side caches of the hot path: how far ``text`` is final, and ``slots`` as an int64 array.
    detokenized: DetokenizeState = field(default_factory=DetokenizeState)
    slot_array: SlotArray = field(default_factory=SlotArray)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    def token_span(self, start: int, end: int) -> list[int]:
        """all_ids[start:end] without building all_ids (the hot path slices one token per step)."""
        n = len(self.prompt_ids)
        if start >= n:
            return self.output_ids[start - n : end - n]
        return (self.prompt_ids + self.output_ids)[start:end]

    def token_at(self, i: int) -> int:
        """all_ids[i] without building all_ids."""
        n = len(self.prompt_ids)
        return self.prompt_ids[i] if i < n else self.output_ids[i - n]

    @property
    def num_computed(self) -> int:
        return len(self.slots)

    @property
    def num_pending(self) -> int:
        """Tokens whose KV is not yet computed (the rest of the prompt, or the last sampled token)."""
        return len(self.prompt_ids) + len(self.output_ids) - len(self.slots)

    def add_placeholder(self) -> None:
        """Stand in for the token the step in flight computes, so the next step can be scheduled now."""
        self.output_ids.append(PLACEHOLDER_ID)
        self.num_placeholders += 1

    def put_token(self, token: int) -> None:
        """Append a sampled token, or write it over the oldest placeholder, which stood for it."""
        if self.num_placeholders:
            self.output_ids[len(self.output_ids) - self.num_placeholders] = token
            self.num_placeholders -= 1
        else:
            self.output_ids.append(token)

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    def to_output(self) -> GenerateOutput:
        end = self.finished_s or time.perf_counter()
        return GenerateOutput(
            request_id=self.rid,
            token_ids=list(self.output_ids),
            text=self.text,
            finish_reason=self.finish_reason or "abort",
            cached_tokens=self.cached_tokens or 0,
            prompt_tokens=len(self.prompt_ids),
            logprobs=list(self.logprobs) if self.params.logprobs is not None else None,
            error=self.error,
            ttft_s=None if self.first_token_s is None else self.first_token_s - self.arrival_s,
            latency_s=end - self.arrival_s,
            routed_experts=self.routed_experts,
            routed_expert_weights=self.routed_expert_weights,
        )

    @property
    def shares_kv(self) -> bool:
        """Whether the request may reuse cached KV and leave its own in the cache.

        KV computed under given routes (router=replay) depends on them: such a
        request neither reuses KV another routing computed nor leaves its own for others.
        """
        return self.replay_ids is None

    @property
    def num_routed(self) -> int:
        """Tokens whose routes are final: the computed ones, short of a token fed only to a step still ahead."""
        return min(len(self.slots), self.num_tokens - 1)
