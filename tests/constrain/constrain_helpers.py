"""Seeded stand-ins for a model, and decoding helpers, for the constraint tests."""

from __future__ import annotations

import json
import re
import zlib
from collections.abc import Callable

import torch
from hypothesis import strategies as st

from moeframe.constrain import ConstraintBackend


def python_matches(compiled: re.Pattern) -> st.SearchStrategy[str]:
    """Strings ``compiled`` (an re.ASCII pattern) fully matches, without U+00A0.

    The constraint engines read ``\\s`` as xgrammar does, ASCII white space and
    U+00A0 (regex_syntax.py); Python's re.ASCII leaves U+00A0 out, so a
    negated class such as ``[^\\s]`` differs between the two on that one
    character, and hypothesis draws it now and then.
    """
    return st.from_regex(compiled, fullmatch=True).filter(lambda text: "\u00a0" not in text)


def encode_compact(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def random_model(backend: ConstraintBackend, seed: int, length_penalty: float) -> Callable[[list[int]], torch.Tensor]:
    """A seeded random "model": fresh Gaussian logits per prefix, minus ``length_penalty`` per token byte.

    Alone it writes garbage; the penalty makes it prefer short tokens so that
    unbounded parts (``\\w+``, free strings) end in tens of steps, not thousands.
    EOS counts as one byte long.
    """
    lengths = torch.tensor([max(len(b), 1) for b in backend.vocab.token_bytes], dtype=torch.float32)

    def logits(token_ids: list[int]) -> torch.Tensor:
        key = zlib.crc32(str((seed, token_ids)).encode())
        generator = torch.Generator().manual_seed(key)
        return 2.0 * torch.randn(backend.vocab_size, generator=generator) - length_penalty * lengths

    return logits


def text_keyed_byte_model(backend: ConstraintBackend, seed: int) -> Callable[[list[int]], torch.Tensor]:
    """A model whose choice depends only on the text so far and which writes one byte per step.

    Whatever tokens spelled the text, the next byte is the same, so its output
    text is the same with and without jump-forward.
    """
    lengths = torch.tensor([len(b) if b else 1 for b in backend.vocab.token_bytes], dtype=torch.float32)

    def logits(token_ids: list[int]) -> torch.Tensor:
        text = backend.vocab.decode(token_ids)
        generator = torch.Generator().manual_seed(zlib.crc32(text, seed))
        return torch.rand(backend.vocab_size, generator=generator) - 10.0 * lengths

    return logits


def decode(backend: ConstraintBackend, token_ids: list[int], eos_id: int) -> str:
    return backend.vocab.decode([t for t in token_ids if t != eos_id]).decode("utf-8")
