"""Per-request generation settings, checked when a request arrives.

``validate`` is the engine's admission check: whatever reaches a step has
been checked here, so one request's settings cannot fail a batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from moeframe.errors import RequestError

if TYPE_CHECKING:
    from moeframe.constrain.structural_tag import StructuralTag

# what torch.Generator.manual_seed takes (it reads a seed as 64 bits)
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass
class SamplingParams:
    max_new_tokens: int = 16
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 = all tokens
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: none; n >= 0: the sampled token's logprob and the top n
    regex: str | None = None
    json_schema: dict | str | None = None
    json_object: bool = False
    choices: list[str] | None = None
    grammar: str | None = None
    structural_tag: StructuralTag | None = None  # tagged JSON segments, e.g. tool calls
    # routes as data: return each computed token's experts per MoE layer (needs runner.routes=true);
    # follow given routes [tokens, MoE layers, k] (needs router=replay), in the layout routed_experts returns
    return_routed_experts: bool = False
    replay_routes: Any = None
    # larger runs first under scheduler=priority and is evicted last under cache eviction=priority (SGLang's sense)
    priority: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]

    def validate(self) -> None:
        """Raise RequestError naming the first bad field; every field is checked for its type as well as its range."""
        if not is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not is_real(self.temperature) or not 0 <= self.temperature < math.inf:
            raise RequestError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if not is_real(self.top_p) or not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not is_int(self.top_k) or self.top_k == 0 or self.top_k < -1:
            raise RequestError(f"top_k must be -1 (all) or >= 1, got {self.top_k!r}")
        if self.seed is not None and (not is_int(self.seed) or not SEED_MIN <= self.seed <= SEED_MAX):
            raise RequestError(f"seed must be an integer in [{SEED_MIN}, {SEED_MAX}], got {self.seed!r}")
        if self.logprobs is not None and (not is_int(self.logprobs) or self.logprobs < 0):
            raise RequestError(f"logprobs must be an integer >= 0, got {self.logprobs!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) for s in self.stop):
            raise RequestError("stop must be a list of strings")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty")
        if not isinstance(self.stop_token_ids, list) or not all(is_int(t) for t in self.stop_token_ids):
            raise RequestError("stop_token_ids must be a list of integers")
        if self.stop and (self.json_schema is not None or self.json_object):
            # a stop string could cut the JSON anywhere, and the output would end with "stop" but break its schema
            raise RequestError("stop strings cannot be combined with a JSON schema or JSON object constraint: the schema decides where the output ends")
        if not is_int(self.priority) or not SEED_MIN <= self.priority < 2**63:
            raise RequestError(f"priority must be a 64-bit integer, got {self.priority!r}")
        if not isinstance(self.ignore_eos, bool) or not isinstance(self.json_object, bool):
            raise RequestError("ignore_eos and json_object must be booleans")
        if not isinstance(self.return_routed_experts, bool):
            raise RequestError(f"return_routed_experts must be true or false, got {self.return_routed_experts!r}")

    @property
    def constraint_kwargs(self) -> dict[str, Any]:
        """The constraint fields that are set, for building a ConstraintSpec."""
        kinds = {
            "regex": self.regex,
            "json_schema": self.json_schema,
            "choices": self.choices,
            "grammar": self.grammar,
            "json_object": self.json_object or None,
            "structural_tag": self.structural_tag,
        }
        return {k: v for k, v in kinds.items() if v is not None}
