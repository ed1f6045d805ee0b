"""The in-process backend: programs drive an Engine through the server's engine thread.

Programs run on many threads (forks, ``run_batch``); the Engine is owned by
one :class:`~moeframe.server.engine_loop.EngineLoop` thread, so concurrent
``gen`` calls join the same continuous batches exactly as HTTP clients do.
"""

from __future__ import annotations

import threading
from typing import Any

from moeframe.api import Engine, SamplingParams
from moeframe.errors import RequestError
from moeframe.frontend.backend import Backend
from moeframe.frontend.ir import Gen
from moeframe.server.app import chat_format_of
from moeframe.server.chat_format import end_of_turn_ids
from moeframe.server.engine_loop import EngineLoop, Submission, Update
from moeframe.server.scoring import continuation_logprobs


def sampling_params_of(spec: Gen, stop_token_ids: list[int]) -> SamplingParams:
    return SamplingParams(
        max_new_tokens=spec.max_tokens,
        temperature=spec.temperature,
        top_p=spec.top_p,
        seed=spec.seed,
        stop=list(spec.stop),
        stop_token_ids=list(stop_token_ids),
        regex=spec.regex,
        json_schema=spec.json_schema,
        choices=spec.choices,
    )


class EngineBackend(Backend):
    def __init__(self, engine: Engine) -> None:
        self.chat = chat_format_of(engine)
        self.end_of_turn_ids = end_of_turn_ids(self.chat, engine.tokenizer)
        self.loop = EngineLoop(engine)

    def generate(self, prompt: str, spec: Gen, stop_token_ids: list[int]) -> str:
        done = threading.Event()
        final: list[Update] = []

        def on_update(update: Update) -> None:
            if update.finished:
                final.append(update)
                done.set()

        self.loop.submit(Submission([prompt], [sampling_params_of(spec, stop_token_ids)]), on_update).result()
        done.wait()
        if final[0].finish_reason == "error":
            raise RequestError(final[0].error or "generation failed")
        return final[0].text

    def continuation_logprobs(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        return self.loop.call(lambda engine: continuation_logprobs(engine, prompt, continuations)).result()

    def cache_prefix(self, prompt: str) -> None:
        self.generate(prompt, Gen("", max_tokens=1), [])

    def stats(self) -> dict[str, Any]:
        return self.loop.call(lambda engine: engine.stats()).result()

    def close(self) -> None:
        self.loop.close()
