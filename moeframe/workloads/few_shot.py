"""workload=few_shot: one long few-shot prefix shared by many short questions.

The shape of SGLang's few-shot benchmarks (GSM8K, MMLU with k examples,
Zheng et al. 2024, section 6): every prompt is the same block of worked
examples followed by a different short question, so a prefix cache serves
nearly all prompt tokens after the first request has finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from moeframe.workloads import WORKLOADS
from moeframe.workloads.driver import ClientParams, ClientRun, ClientWorkload, Submission, drive
from moeframe.workloads.text_source import TextSource

if TYPE_CHECKING:
    from moeframe.api import Engine


@dataclass
class FewShotParams(ClientParams):
    prefix_tokens: int = 512  # the shared block of "Q: ... A: ..." examples
    num_questions: int = 64  # requests, one distinct question each
    question_tokens: int = 12  # each question's "Q: ..." line, before its "A:" cue
    max_concurrency: int = 4  # a question hits the cached prefix only once an earlier one has finished

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("prefix_tokens", "num_questions", "question_tokens"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")


@WORKLOADS.register("few_shot", params=FewShotParams)
class FewShotWorkload(ClientWorkload):
    def __init__(self, params: FewShotParams, **_: object) -> None:
        self.params = params

    def prompts(self, engine: "Engine") -> list[list[int]]:
        p = self.params
        text = TextSource(engine.encode, p.seed)
        prefix = text.tokens(p.prefix_tokens, "Q: {}\nA: {}\n\n")
        cue = engine.encode("\nA:")
        return [prefix + text.tokens(p.question_tokens, "Q: {}") + cue for _ in range(p.num_questions)]

    def client_run(self, engine: "Engine") -> ClientRun:
        first = [Submission(ids, i) for i, ids in enumerate(self.prompts(engine))]
        return drive(engine, first, self.params, desc="few_shot")
