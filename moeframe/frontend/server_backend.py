"""The HTTP backend: programs run against a moeframe server's URL.

``gen`` is a ``/v1/completions`` call on the program's text (constraints as
the server's extra fields), ``select`` scores choices through ``/score``,
and the chat template and end-of-turn tokens come from ``/model_info``, so
a program renders roles exactly as the server's chat endpoint would.
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx

from moeframe.errors import RequestError
from moeframe.frontend.backend import Backend
from moeframe.frontend.ir import Gen
from moeframe.server.auth import API_KEY_ENV
from moeframe.server.chat_format import ChatFormat


class ServerBackend(Backend):
    def __init__(self, base_url: str, timeout_s: float = 300.0, api_key: str | None = None) -> None:
        """``api_key``: the server's key (default $MOEFRAME_API_KEY), sent as a Bearer token when set."""
        key = api_key or os.environ.get(API_KEY_ENV)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.client = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout_s, headers=headers)
        info = self._get("/model_info")
        self.model = info["model"]
        self.chat = ChatFormat(info["chat_template"])
        self.end_of_turn_ids = list(info["end_of_turn_token_ids"])

    def _get(self, path: str) -> Any:
        response = self.client.get(path)
        response.raise_for_status()
        return response.json()

    def _post(self, path: str, body: dict[str, Any]) -> Any:
        response = self.client.post(path, json=body)
        if response.status_code >= 400:
            raise RequestError(response.json().get("error", {}).get("message", response.text))
        return response.json()

    def generate(self, prompt: str, spec: Gen, stop_token_ids: list[int]) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": prompt,
            "max_tokens": spec.max_tokens,
            "temperature": spec.temperature,
            "top_p": spec.top_p,
            "stop": spec.stop or None,
            "seed": spec.seed,
            "stop_token_ids": stop_token_ids,
            "regex": spec.regex,
            "choices": spec.choices,
        }
        if spec.json_schema is not None:
            schema = json.loads(spec.json_schema) if isinstance(spec.json_schema, str) else spec.json_schema
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": spec.name, "schema": schema}}
        return self._post("/v1/completions", body)["choices"][0]["text"]

    def continuation_logprobs(self, prompt: str, continuations: list[str]) -> list[list[float]]:
        return self._post("/score", {"prompt": prompt, "continuations": continuations})["logprobs"]

    def cache_prefix(self, prompt: str) -> None:
        self._post("/v1/completions", {"model": self.model, "prompt": prompt, "max_tokens": 1, "temperature": 0})

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    def close(self) -> None:
        self.client.close()
