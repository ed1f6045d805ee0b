"""Prompt text for the cache workloads: distinct lines of moeframe's sample text, as token ids.

Workloads build prompts by concatenating token id lists (never by
re-encoding joined text), so two prompts that share a prefix share it token
for token, whatever the tokenizer does at the seams.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from functools import lru_cache

from moeframe.data import sample_text

MIN_LINE_CHARS = 20


@lru_cache(maxsize=1)
def distinct_lines() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for line in sample_text().splitlines():
        line = line.strip()
        if len(line) >= MIN_LINE_CHARS:
            seen.setdefault(line)
    return tuple(seen)


class TextSource:
    """Lines of the sample text in a seeded order; every ``tokens`` call returns a sequence not returned before."""

    def __init__(self, encode: Callable[[str], list[int]], seed: int) -> None:
        self.encode = encode
        lines = list(distinct_lines())
        random.Random(seed).shuffle(lines)
        self._lines = iter(lines)
        self._returned: set[tuple[int, ...]] = set()

    def line(self) -> str:
        line = next(self._lines, None)
        if line is None:
            raise ValueError(f"the sample text has only {len(distinct_lines())} distinct lines; ask for fewer or shorter prompts")
        return line

    def tokens(self, n: int, template: str = "{}") -> list[int]:
        """n token ids of lines poured into ``template`` (one line per ``{}``), repeated until n are reached."""
        while True:
            ids: list[int] = []
            while len(ids) < n:
                ids += self.encode(template.format(*(self.line() for _ in range(template.count("{}")))))
            ids = ids[:n]
            if tuple(ids) not in self._returned:
                self._returned.add(tuple(ids))
                return ids
