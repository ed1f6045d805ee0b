"""Regex syntax tree -> byte-level DFA (Thompson NFA, then subset construction).

The DFA is a dense table ``next_state[state, byte]`` with state 0 the dead
sink and state 1 the start, so the token index can walk every token of a
vocabulary through it with a few vectorised gathers (Outlines' approach of
running tokens through a byte automaton; Willard & Louf 2023, "Efficient
Guided Generation for LLMs"). Every live state can reach an accepting state:
the syntax tree has no intersection or complement, and its parts that match
nothing are pruned before the NFA is built (:func:`prune`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from moeframe.constrain.regex_syntax import Alt, Chars, Concat, Node, Repeat
from moeframe.constrain.utf8 import utf8_sequences
from moeframe.constrain.errors import BudgetError

DEAD = 0
START = 1


@dataclass(frozen=True)
class ByteDFA:
    next_state: np.ndarray  # [num_states, 256] int32; row 0 is the dead sink
    accepting: np.ndarray  # [num_states] bool

    @property
    def num_states(self) -> int:
        return self.next_state.shape[0]

    def walk(self, state: int, data: bytes) -> int:
        for byte in data:
            state = int(self.next_state[state, byte])
            if state == DEAD:
                return DEAD
        return state

    def matches(self, data: bytes) -> bool:
        return bool(self.accepting[self.walk(START, data)])


class _NFA:
    """Thompson NFA over bytes: epsilon lists and (lo, hi, target) byte-range edges."""

    def __init__(self, max_states: int, deadline: float) -> None:
        self.eps: list[list[int]] = []
        self.edges: list[list[tuple[int, int, int]]] = []
        self.max_states = max_states
        self.deadline = deadline

    def state(self) -> int:
        if len(self.eps) >= self.max_states:
            raise BudgetError(f"constraint too large: its automaton exceeds {self.max_states} states (max_dfa_states x 8)")
        if len(self.eps) % 4096 == 0 and time.monotonic() > self.deadline:
            raise BudgetError("constraint too large: building its automaton passed the compile time budget (compile_timeout_s)")
        self.eps.append([])
        self.edges.append([])
        return len(self.eps) - 1

    def build(self, node: Node) -> tuple[int, int]:
        """Fragment (entry, exit) matching ``node``."""
        if isinstance(node, Chars):
            return self._chars(node)
        if isinstance(node, Concat):
            entry = exit_ = self.state()
            for item in node.items:
                a, b = self.build(item)
                self.eps[exit_].append(a)
                exit_ = b
            return entry, exit_
        if isinstance(node, Alt):
            entry, exit_ = self.state(), self.state()
            for option in node.options:
                a, b = self.build(option)
                self.eps[entry].append(a)
                self.eps[b].append(exit_)
            return entry, exit_
        return self._repeat(node)

    def _chars(self, node: Chars) -> tuple[int, int]:
        entry, exit_ = self.state(), self.state()
        for lo, hi in node.ranges:
            for seq in utf8_sequences(lo, hi):
                here = entry
                for k, (b_lo, b_hi) in enumerate(seq):
                    there = exit_ if k == len(seq) - 1 else self.state()
                    self.edges[here].append((b_lo, b_hi, there))
                    here = there
        return entry, exit_

    def _repeat(self, node: Repeat) -> tuple[int, int]:
        entry = exit_ = self.state()
        for _ in range(node.min):
            a, b = self.build(node.item)
            self.eps[exit_].append(a)
            exit_ = b
        if node.max is None:
            a, b = self.build(node.item)
            self.eps[exit_].append(a)
            self.eps[b].append(exit_)
            return entry, exit_
        end = self.state()
        for _ in range(node.max - node.min):
            a, b = self.build(node.item)
            self.eps[exit_].extend((a, end))
            exit_ = b
        self.eps[exit_].append(end)
        return entry, end


def prune(node: Node) -> Node | None:
    """``node`` without its parts that match nothing (empty classes such as ``[^\\s\\S]``); None if all of it.

    After pruning, every NFA state lies on a path to the accepting state, so
    every live DFA state can still finish: no dead end mid-output.
    """
    if isinstance(node, Chars):
        return node if node.ranges else None
    if isinstance(node, Concat):
        items = [prune(item) for item in node.items]
        return None if any(item is None for item in items) else Concat(tuple(items))
    if isinstance(node, Alt):
        options = [o for o in (prune(option) for option in node.options) if o is not None]
        return None if not options else options[0] if len(options) == 1 else Alt(tuple(options))
    item = prune(node.item)
    if item is None:
        return None if node.min > 0 else Concat(())
    return Repeat(item, node.min, node.max)


def compile_dfa(node: Node, max_states: int = 20000, deadline: float = math.inf) -> ByteDFA:
    """Subset construction; :class:`BudgetError` when NFA or DFA would exceed ``max_states`` or time passes ``deadline``.

    Both limits are checked as the automata grow (each new state), so an
    oversized constraint fails early rather than after building it.
    ``deadline`` is a ``time.monotonic()`` value.
    """
    live = prune(node)
    nfa = _NFA(max_states * 8, deadline)
    start, accept = nfa.build(live if live is not None else Chars(()))
    closures: dict[int, frozenset[int]] = {}

    def closure(s: int) -> frozenset[int]:
        if s not in closures:
            seen, stack = {s}, [s]
            while stack:
                for t in nfa.eps[stack.pop()]:
                    if t not in seen:
                        seen.add(t)
                        stack.append(t)
            closures[s] = frozenset(seen)
        return closures[s]

    ids: dict[frozenset[int], int] = {frozenset(): DEAD, closure(start): START}
    order = [frozenset(), closure(start)]
    rows = [np.zeros(256, dtype=np.int32)]
    while len(rows) < len(order):
        subset = order[len(rows)]
        if len(order) > max_states:
            raise BudgetError(f"constraint too large: its DFA exceeds {max_states} states (max_dfa_states)")
        if time.monotonic() > deadline:
            raise BudgetError("constraint too large: building its DFA passed the compile time budget (compile_timeout_s)")
        row = np.zeros(256, dtype=np.int32)
        edges = [edge for s in subset for edge in nfa.edges[s]]
        cuts = sorted({lo for lo, _, _ in edges} | {hi + 1 for _, hi, _ in edges})
        for lo, nxt in zip(cuts, cuts[1:]):
            targets = frozenset().union(*(closure(t) for e_lo, e_hi, t in edges if e_lo <= lo and nxt - 1 <= e_hi))
            if not targets:
                continue
            if targets not in ids:
                ids[targets] = len(order)
                order.append(targets)
            row[lo:nxt] = ids[targets]
        rows.append(row)
    accepting = np.array([accept in subset for subset in order], dtype=bool)
    return ByteDFA(next_state=np.stack(rows), accepting=accepting)
