"""A small regex parser: pattern text -> syntax tree over Unicode code points.

The ``fsm`` backend needs the structure of a pattern, not a matcher, so it
parses the common syntax itself (as Outlines does through ``interegular``):
literals, escapes (``\\n \\t \\xHH \\uHHHH``), classes ``[...]`` and ``[^...]``,
``\\d \\w \\s`` and their negations (ASCII, plus U+00A0 for ``\\s``: the sets
xgrammar uses, so both backends read a pattern alike),
``.`` (any character but newline), groups ``(...)``, ``(?:...)``,
``(?P<name>...)``, alternation, and the quantifiers ``? * + {m} {m,} {m,n}``
(lazy forms accepted: they match the same language). A ``^`` at the start and
a ``$`` at the end are ignored, since a constraint always matches whole
output. Anything else (lookaround, backreferences, ``\\b``, inline flags) is
refused with a :class:`RequestError` that names it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from moeframe.constrain.errors import BudgetError
from moeframe.errors import RequestError

MAX_CODE_POINT = 0x10FFFF
SURROGATES = (0xD800, 0xDFFF)

Ranges = tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Chars:
    """One character from a set of code points, as sorted disjoint inclusive ranges."""

    ranges: Ranges


@dataclass(frozen=True)
class Concat:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Alt:
    options: tuple["Node", ...]


@dataclass(frozen=True)
class Repeat:
    item: "Node"
    min: int
    max: int | None  # None: unbounded


Node = Chars | Concat | Alt | Repeat

EMPTY = Concat(())


def normalize(ranges: list[tuple[int, int]]) -> Ranges:
    """Sort and merge ranges; drop surrogate code points (they have no UTF-8 form)."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(ranges):
        for piece in _minus_surrogates(lo, hi):
            if out and piece[0] <= out[-1][1] + 1:
                out[-1] = (out[-1][0], max(out[-1][1], piece[1]))
            else:
                out.append(piece)
    return tuple(out)


def _minus_surrogates(lo: int, hi: int) -> list[tuple[int, int]]:
    s_lo, s_hi = SURROGATES
    if hi < s_lo or lo > s_hi:
        return [(lo, hi)]
    return [r for r in ((lo, s_lo - 1), (s_hi + 1, hi)) if r[0] <= r[1]]


def complement(ranges: Ranges) -> Ranges:
    out, start = [], 0
    for lo, hi in ranges:
        if lo > start:
            out.append((start, lo - 1))
        start = hi + 1
    if start <= MAX_CODE_POINT:
        out.append((start, MAX_CODE_POINT))
    return normalize(out)


DIGIT = normalize([(ord("0"), ord("9"))])
WORD = normalize([(ord("0"), ord("9")), (ord("A"), ord("Z")), (ord("a"), ord("z")), (ord("_"), ord("_"))])
# ASCII white space and U+00A0: xgrammar's \s, which ECMAScript and Python both count as white space
SPACE = normalize([(9, 13), (32, 32), (0xA0, 0xA0)])
ANY_BUT_NEWLINE = complement(((10, 10),))
SHORTHANDS = {"d": DIGIT, "w": WORD, "s": SPACE, "D": complement(DIGIT), "W": complement(WORD), "S": complement(SPACE)}
SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "f": "\f", "v": "\v", "a": "\a", "0": "\0"}
UNSUPPORTED_ESCAPES = {"b": "word boundary \\b", "B": "\\B", "A": "\\A", "Z": "\\Z", "z": "\\z", "G": "\\G"}


def literal(text: str) -> Node:
    return Concat(tuple(Chars(((ord(c), ord(c)),)) for c in text))


class _Parser:
    def __init__(self, pattern: str, deadline: float) -> None:
        self.text = pattern
        self.pos = 0
        self.deadline = deadline
        self.atoms = 0

    def fail(self, message: str) -> RequestError:
        return RequestError(f"regex {self.text!r}: {message} at position {self.pos}")

    def peek(self) -> str | None:
        return self.text[self.pos] if self.pos < len(self.text) else None

    def take(self) -> str:
        if self.pos >= len(self.text):
            raise self.fail("unexpected end of pattern")
        ch = self.text[self.pos]
        self.pos += 1
        return ch

    def parse(self) -> Node:
        if self.peek() == "^":
            self.pos += 1
        node = self.alternation()
        if self.pos < len(self.text):
            raise self.fail("unbalanced ')'")
        return node

    def alternation(self) -> Node:
        options = [self.concatenation()]
        while self.peek() == "|":
            self.pos += 1
            options.append(self.concatenation())
        return options[0] if len(options) == 1 else Alt(tuple(options))

    def concatenation(self) -> Node:
        items: list[Node] = []
        while (ch := self.peek()) is not None and ch not in "|)":
            if ch == "$":
                self.pos += 1
                if self.pos != len(self.text):
                    raise self.fail("'$' is supported only at the end of the pattern")
                continue
            items.append(self.quantified())
        return items[0] if len(items) == 1 else Concat(tuple(items))

    def quantified(self) -> Node:
        node = self.atom()
        while (ch := self.peek()) is not None and ch in "?*+{":
            bounds = self.quantifier()
            if bounds is None:
                break
            node = Repeat(node, *bounds)
            if self.peek() == "?":
                self.pos += 1
            if self.peek() is not None and self.peek() in "*+?":
                raise self.fail("multiple repeat")
        return node

    def quantifier(self) -> tuple[int, int | None] | None:
        ch = self.take()
        if ch == "?":
            return 0, 1
        if ch == "*":
            return 0, None
        if ch == "+":
            return 1, None
        close = self.text.find("}", self.pos)
        body = self.text[self.pos : close] if close >= 0 else ""
        lo_text, comma, hi_text = body.partition(",")
        valid = close >= 0 and (lo_text.isdigit() or (comma and not lo_text)) and (not hi_text or hi_text.isdigit())
        if not valid or (not comma and not lo_text):
            self.pos -= 1  # a '{' that starts no quantifier is a literal, as in Python's re
            return None
        lo = int(lo_text) if lo_text else 0
        hi = (int(hi_text) if hi_text else None) if comma else lo
        if hi is not None and hi < lo:
            raise self.fail(f"min repeat {lo} greater than max repeat {hi}")
        self.pos = close + 1
        return lo, hi

    def atom(self) -> Node:
        self.atoms += 1
        if self.atoms % 4096 == 0 and time.monotonic() > self.deadline:
            raise BudgetError("constraint too large: parsing its regex passed the compile time budget (compile_timeout_s)")
        start = self.pos
        ch = self.take()
        if ch == "(":
            return self.group()
        if ch == "[":
            return Chars(self.char_class())
        if ch == ".":
            return Chars(ANY_BUT_NEWLINE)
        if ch == "\\":
            return Chars(self.escape(in_class=False))
        if ch in "*+?":
            self.pos = start
            raise self.fail("nothing to repeat")
        if ch == "{":
            self.pos = start
            if self.quantifier() is not None:
                self.pos = start
                raise self.fail("nothing to repeat")
            self.pos = start + 1
        if ch == "^":
            self.pos = start
            raise self.fail("'^' is supported only at the start of the pattern")
        return Chars(((ord(ch), ord(ch)),))

    def group(self) -> Node:
        if self.peek() == "?":
            self.pos += 1
            kind = self.take()
            if kind == ":":
                pass
            elif kind == "P" and self.peek() == "<":
                end = self.text.find(">", self.pos)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.pos = end + 1
            elif kind == "<" and self.peek() not in ("=", "!"):
                end = self.text.find(">", self.pos)
                if end < 0:
                    raise self.fail("unterminated group name")
                self.pos = end + 1
            else:
                raise self.fail(f"unsupported group construct '(?{kind}' (lookaround, flags and references are not regular)")
        node = self.alternation()
        if self.peek() != ")":
            raise self.fail("missing ')'")
        self.pos += 1
        return node

    def char_class(self) -> Ranges:
        negate = self.peek() == "^"
        if negate:
            self.pos += 1
        ranges: list[tuple[int, int]] = []
        first = True
        while True:
            ch = self.take()
            if ch == "]" and not first:
                break
            first = False
            lo_set = self.escape(in_class=True) if ch == "\\" else ((ord(ch), ord(ch)),)
            is_single = len(lo_set) == 1 and lo_set[0][0] == lo_set[0][1]
            if is_single and self.peek() == "-" and self.pos + 1 < len(self.text) and self.text[self.pos + 1] != "]":
                self.pos += 1
                hi_ch = self.take()
                hi_set = self.escape(in_class=True) if hi_ch == "\\" else ((ord(hi_ch), ord(hi_ch)),)
                if len(hi_set) != 1 or hi_set[0][0] != hi_set[0][1]:
                    raise self.fail("bad character range")
                lo, hi = lo_set[0][0], hi_set[0][0]
                if hi < lo:
                    raise self.fail(f"bad character range {chr(lo)}-{chr(hi)}")
                ranges.append((lo, hi))
            else:
                ranges.extend(lo_set)
        result = normalize(ranges)
        return complement(result) if negate else result

    def escape(self, in_class: bool) -> Ranges:
        ch = self.take()
        if ch in SHORTHANDS:
            return SHORTHANDS[ch]
        if ch in SIMPLE_ESCAPES:
            code = ord(SIMPLE_ESCAPES[ch])
        elif ch in "xuU":
            width = {"x": 2, "u": 4, "U": 8}[ch]
            digits = self.text[self.pos : self.pos + width]
            if len(digits) != width or any(d not in "0123456789abcdefABCDEF" for d in digits):
                raise self.fail(f"bad escape \\{ch}{digits}")
            self.pos += width
            code = int(digits, 16)
            if code > MAX_CODE_POINT:
                raise self.fail(f"code point {digits} out of range")
        elif ch == "b" and in_class:
            code = 8
        elif ch in UNSUPPORTED_ESCAPES:
            raise self.fail(f"unsupported {UNSUPPORTED_ESCAPES[ch]}")
        elif ch.isdigit():
            raise self.fail("backreferences are not supported")
        elif ch.isalnum():
            raise self.fail(f"bad escape \\{ch}")
        else:
            code = ord(ch)
        return normalize([(code, code)])


def parse_regex(pattern: str, deadline: float = math.inf) -> Node:
    """Parse ``pattern`` into a syntax tree; :class:`RequestError` on bad or non-regular syntax.

    :class:`BudgetError` once ``time.monotonic()`` passes ``deadline``.
    """
    return _Parser(pattern, deadline).parse()
