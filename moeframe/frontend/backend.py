"""What a program needs from wherever the model runs: generate, score continuations, warm a prefix.

Two backends implement it: :class:`EngineBackend` (the in-process Engine)
and :class:`ServerBackend` (a moeframe server's URL), like SGLang's
``Runtime`` and ``RuntimeEndpoint``. ``select`` is written once here on top
of them, so both backends choose alike.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from moeframe.frontend.ir import Gen, Select
from moeframe.server.chat_format import ChatFormat
from moeframe.server.scoring import best_choice


class Backend(ABC):
    chat: ChatFormat
    end_of_turn_ids: list[int]

    @abstractmethod
    def generate(self, prompt: str, spec: Gen, stop_token_ids: list[int]) -> str:
        """The text generated after ``prompt`` under ``spec``."""

    @abstractmethod
    def continuation_logprobs(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        """Token log-probabilities of each continuation given the prompt."""

    @abstractmethod
    def cache_prefix(self, prompt: str) -> None:
        """Compute ``prompt`` once so that the branches of a fork find it in the prefix cache."""

    @abstractmethod
    def stats(self) -> dict[str, Any]:
        """The engine's statistics (cache hits, prefill tokens, ...)."""

    def close(self) -> None:
        """Release what the backend holds."""

    def select(self, prompt: str, spec: Select) -> str:
        if spec.method == "logprob":
            return spec.choices[best_choice(self.continuation_logprobs(prompt, spec.choices))]
        longest_bytes = max(len(c.encode("utf-8")) for c in spec.choices)
        return self.generate(prompt, Gen(spec.name, max_tokens=longest_bytes + 1, choices=spec.choices), [])
