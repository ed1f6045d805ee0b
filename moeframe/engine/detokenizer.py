"""Incremental detokenization: a request's text after each new token, decoding only a short window.

Decoding the whole output every step costs time linear in its length, so a
long generation costs quadratic time. vLLM's detokenizer and SGLang's
DetokenizerManager keep two offsets into the output instead: text is final up
to ``read_offset``, and each step decodes only ``ids[prefix_offset:]``, where
the tokens in ``[prefix_offset, read_offset)`` are context (SentencePiece-style
decoders drop or keep a leading space depending on what precedes a token).
The new text is what that window decodes to beyond what its context decodes
to. A window that ends in U+FFFD may be an incomplete UTF-8 character that
later tokens complete, so the read offset only moves past it once it decodes
cleanly.

Unlike the streaming-only versions, the text returned every step is the
final part plus the window's pending tail, U+FFFD included, so it equals
``detokenize(ids)`` at every step, not only at the end: stop strings are
found at the same step as before and the server's streaming hold-back
(``TextDelta``) sees the same strings. A decoder that rewrites text across
the window's edge (a clean-up of spaces before punctuation, say) is caught
by the window not extending its context's text, and that step falls back to
decoding everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

Detokenize = Callable[[list[int]], str]

REPLACEMENT_CHAR = "\ufffd"


@dataclass
class DetokenizeState:
    """Where one request's incremental decode stands; the ids are the request's own output list."""

    text: str = ""  # detokenize(ids[:read_offset])
    prefix_offset: int = 0
    read_offset: int = 0
    prefix_text: str = ""  # ids[prefix_offset:read_offset] decoded as one window


class IncrementalDetokenizer:
    def __init__(self, detokenize: Detokenize, max_window_tokens: int = 8) -> None:
        """``max_window_tokens``: the longest window decoded in a step that brings one token."""
        if max_window_tokens < 2:
            raise ValueError(f"max_window_tokens must be >= 2, got {max_window_tokens}")
        self.detokenize = detokenize
        self.max_window_tokens = max_window_tokens

    def __call__(self, state: DetokenizeState, ids: list[int]) -> str:
        """The text of ``ids`` (which only ever grows at the end between calls), advancing ``state``."""
        if len(ids) < state.read_offset:
            reset(state)
        window = self.detokenize(ids[state.prefix_offset :])
        if not window.startswith(state.prefix_text):
            reset(state)
            window = self.detokenize(ids)
        pending = window[len(state.prefix_text) :]
        if len(ids) == state.read_offset or pending.endswith(REPLACEMENT_CHAR):
            return state.text + pending
        state.text += pending
        context = self.detokenize(ids[state.read_offset :]) if len(ids) - state.prefix_offset >= self.max_window_tokens else ""
        if context:
            state.prefix_offset, state.prefix_text = state.read_offset, context
        else:
            # Context that decodes to nothing (special tokens, say) would make the next token
            # the window's first, whose leading space some decoders drop: keep the old one.
            state.prefix_text = window
        state.read_offset = len(ids)
        return state.text


def reset(state: DetokenizeState) -> None:
    state.text, state.prefix_offset, state.read_offset, state.prefix_text = "", 0, 0, ""
