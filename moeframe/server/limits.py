"""The operator's limits on one request (``server.max_*``), checked before any tokenizing or compiling.

Each check raises an APIError (400) naming the field and the config key
that sets the limit, so a client learns what to change and an operator
what to raise. The body size (413) and the waiting queue (429) are checked
elsewhere: before the body is read (``body_limit.py``) and at admission
(``engine_loop.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from moeframe.config import ServerConfig
from moeframe.server.errors import APIError
from moeframe.server.protocol import ChatCompletionRequest, CompletionRequest, SamplingFields, ScoreRequest


@dataclass(frozen=True)
class RequestLimits:
    max_prompt_chars: int
    max_n: int
    max_prompts: int
    max_choices: int
    max_stop: int
    max_score_continuations: int

    @classmethod
    def of(cls, server: ServerConfig) -> "RequestLimits":
        return cls(
            server.max_prompt_chars,
            server.max_n,
            server.max_prompts,
            server.max_choices,
            server.max_stop,
            server.max_score_continuations,
        )

    def _at_most(self, field: str, count: int, limit: int, key: str, what: str) -> None:
        if count > limit:
            raise APIError(f"{field}: {count} {what}; this server allows at most {limit} (server.{key})", param=field)

    def _text(self, field: str, text: str) -> None:
        self._at_most(field, len(text), self.max_prompt_chars, "max_prompt_chars", "characters")

    def sampling(self, body: SamplingFields) -> None:
        self._at_most("n", body.n, self.max_n, "max_n", "choices asked for")
        if body.choices is not None:
            self._at_most("choices", len(body.choices), self.max_choices, "max_choices", "entries")
        if isinstance(body.stop, list):
            self._at_most("stop", len(body.stop), self.max_stop, "max_stop", "stop strings")
        self._at_most("stop_token_ids", len(body.stop_token_ids), self.max_stop, "max_stop", "stop token ids")

    def completion(self, body: CompletionRequest) -> None:
        self.sampling(body)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if prompts and not isinstance(prompts[0], int):
            self._at_most("prompt", len(prompts), self.max_prompts, "max_prompts", "prompts")
        for prompt in prompts:
            if isinstance(prompt, str):
                self._text("prompt", prompt)

    def chat(self, body: ChatCompletionRequest) -> None:
        self.sampling(body)
        chars = 0
        for message in body.messages:
            content = message.content
            if isinstance(content, str):
                chars += len(content)
            elif content is not None:
                chars += sum(len(str(part.get("text", ""))) for part in content)
        self._at_most("messages", chars, self.max_prompt_chars, "max_prompt_chars", "characters of content")

    def score(self, body: ScoreRequest) -> None:
        self._at_most(
            "continuations", len(body.continuations), self.max_score_continuations, "max_score_continuations", "continuations"
        )
        self._text("prompt", body.prompt)
        for text in body.continuations:
            self._text("continuations", text)
