"""A tokenizer's vocabulary as raw bytes, plus the encoder used for jump-forward.

Constraints are checked on bytes, so every backend needs the exact bytes each
token id stands for. Byte-level BPE vocabularies (GPT-2, Qwen, DeepSeek) spell
bytes with GPT-2's printable-unicode alphabet; SentencePiece ones (Llama,
Mixtral) use ``\u2581`` for space and ``<0xHH>`` byte-fallback pieces. Special tokens
map to ``b""``: a constraint never allows them (EOS is handled on its own).
Added tokens that are not special (Qwen's ``<tool_call>``) spell their text,
which the detokenizer keeps, so a constraint can write them as one token. Ids past the tokenizer's size up to the model's
``vocab_size`` (padding rows of the LM head) are empty too.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from tokenizers import Tokenizer


def _gpt2_byte_alphabet() -> dict[str, int]:
    """GPT-2's bijection bytes <-> printable characters, inverted (character -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_OF_CHAR = _gpt2_byte_alphabet()


@dataclass(frozen=True)
class TokenVocab:
    """Bytes of every token id in ``0..vocab_size-1`` and a text encoder without special tokens."""

    token_bytes: tuple[bytes, ...]
    encode: Callable[[str], list[int]]

    @property
    def vocab_size(self) -> int:
        return len(self.token_bytes)

    def decode(self, token_ids: list[int]) -> bytes:
        return b"".join(self.token_bytes[t] for t in token_ids)

    def padded_bytes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, bytes [N, L] uint8, lengths) of non-empty tokens, longest first, for vectorised walks."""
        ids = np.array([t for t, b in enumerate(self.token_bytes) if b], dtype=np.int64)
        lengths = np.array([len(self.token_bytes[t]) for t in ids], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")
        ids, lengths = ids[order], lengths[order]
        table = np.zeros((len(ids), int(lengths.max(initial=1))), dtype=np.uint8)
        for row, t in enumerate(ids):
            data = self.token_bytes[t]
            table[row, : len(data)] = np.frombuffer(data, dtype=np.uint8)
        return ids, table, lengths

    @classmethod
    def from_tokenizer(cls, tokenizer: Any, vocab_size: int) -> "TokenVocab":
        """From a ``tokenizers.Tokenizer`` or a Hugging Face tokenizer with a fast backend."""
        backend = _backend(tokenizer)
        pieces = [backend.id_to_token(t) for t in range(backend.get_vocab_size(with_added_tokens=True))]
        if len(pieces) > vocab_size:
            raise ValueError(f"tokenizer has {len(pieces)} tokens but the model's vocab_size is {vocab_size}")
        config = json.loads(backend.to_str())
        added = {entry["content"]: bool(entry.get("special", True)) for entry in config.get("added_tokens") or []}
        to_bytes = piece_decoder(config)

        def spelled(piece: str | None) -> bytes:
            if piece is None or added.get(piece, False):
                return b""
            return piece.encode("utf-8") if piece in added else to_bytes(piece)

        token_bytes = [spelled(piece) for piece in pieces]
        token_bytes += [b""] * (vocab_size - len(token_bytes))

        def encode(text: str) -> list[int]:
            return list(backend.encode(text, add_special_tokens=False).ids)

        return cls(tuple(token_bytes), encode)


def _backend(tokenizer: Any) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if isinstance(backend, Tokenizer):
        return backend
    raise ValueError(f"need a tokenizers.Tokenizer or a fast Hugging Face tokenizer, got {type(tokenizer).__name__}")


def piece_decoder(config: dict[str, Any]) -> Callable[[str], bytes]:
    """Piece text -> bytes for a tokenizer.json ``config``: GPT-2 byte alphabet or SentencePiece spelling."""
    decoder = json.dumps(config.get("decoder"))
    if "ByteLevel" in decoder:
        return lambda piece: bytes(_BYTE_OF_CHAR[c] for c in piece)

    def sentencepiece(piece: str) -> bytes:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("\u2581", " ").encode("utf-8")

    return sentencepiece
