"""Engine logprob entries -> the two OpenAI shapes (legacy completions, chat ``content`` list)."""

from __future__ import annotations

from typing import Any


def completion_logprobs(entries: list[dict[str, Any]], text_offset: int) -> dict[str, Any]:
    """{tokens, token_logprobs, top_logprobs, text_offset}; offsets count characters of token text."""
    offsets, at = [], text_offset
    for e in entries:
        offsets.append(at)
        at += len(e["token"])
    return {
        "tokens": [e["token"] for e in entries],
        "token_logprobs": [e["logprob"] for e in entries],
        "top_logprobs": [{t["token"]: t["logprob"] for t in e["top"]} for e in entries],
        "text_offset": offsets,
    }


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


def chat_logprobs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "content": [
            _token(e["token"], e["logprob"]) | {"top_logprobs": [_token(t["token"], t["logprob"]) for t in e["top"]]}
            for e in entries
        ]
    }
