"""Per-request generation settings, checked when a request arrives."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from moeframe.errors import RequestError


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

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]

    def validate(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise RequestError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise RequestError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise RequestError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k == 0 or self.top_k < -1:
            raise RequestError(f"top_k must be -1 (all) or >= 1, got {self.top_k}")
        if self.logprobs is not None and self.logprobs < 0:
            raise RequestError(f"logprobs must be >= 0, got {self.logprobs}")
        if any(not s for s in self.stop):
            raise RequestError("stop strings must not be empty")

    @property
    def constraint_kwargs(self) -> dict[str, Any]:
        """The constraint fields that are set, for building a ConstraintSpec."""
        kinds = {
            "regex": self.regex,
            "json_schema": self.json_schema,
            "choices": self.choices,
            "grammar": self.grammar,
            "json_object": self.json_object or None,
        }
        return {k: v for k, v in kinds.items() if v is not None}
