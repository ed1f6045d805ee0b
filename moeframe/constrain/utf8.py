"""Code point ranges -> sequences of byte ranges, so an automaton can run on UTF-8 bytes.

Tokens are byte strings (a byte-level BPE token may hold half a character),
so the ``fsm`` backend matches bytes, not characters. A range of code points
becomes a few sequences of byte ranges, each sequence covering a block whose
continuation bytes span full ranges; the splitting is the one Russ Cox
describes for RE2 and Rust's ``utf8-ranges`` implements.
"""

from __future__ import annotations

ByteRanges = list[tuple[int, int]]

_LENGTH_LIMITS = (0x7F, 0x7FF, 0xFFFF)


def utf8_sequences(lo: int, hi: int) -> list[ByteRanges]:
    """Byte-range sequences whose union encodes exactly the code points ``lo..hi`` (no surrogates)."""
    out: list[ByteRanges] = []
    pending = [(lo, hi)]
    while pending:
        lo, hi = pending.pop()
        split = _split(lo, hi)
        if split:
            pending.extend(split)
            continue
        first, last = chr(lo).encode("utf-8"), chr(hi).encode("utf-8")
        out.append(list(zip(first, last)))
    return out


def _split(lo: int, hi: int) -> list[tuple[int, int]]:
    for limit in _LENGTH_LIMITS:
        if lo <= limit < hi:
            return [(lo, limit), (limit + 1, hi)]
    length = len(chr(lo).encode("utf-8"))
    for i in range(1, length):
        mask = (1 << (6 * i)) - 1
        if lo & ~mask != hi & ~mask:
            if lo & mask:
                return [(lo, lo | mask), ((lo | mask) + 1, hi)]
            if hi & mask != mask:
                return [(lo, (hi & ~mask) - 1), (hi & ~mask, hi)]
    return []
