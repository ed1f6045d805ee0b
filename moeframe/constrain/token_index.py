"""The token-level view of a byte DFA: for each state, the allowed tokens and where they lead.

Outlines builds this index for every state up front; here a state's row is
computed the first time a request reaches it and cached for every later
request with the same constraint, so a large automaton costs only for the
states generation visits. One visit walks the whole vocabulary through the
DFA at once: tokens sorted longest first, one gather per byte position over
the tokens still alive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moeframe.constrain.bitmask import pack_allowed
from moeframe.constrain.dfa import DEAD, ByteDFA
from moeframe.constrain.vocab import TokenVocab


@dataclass(frozen=True)
class VocabTable:
    """A vocabulary laid out for vectorised DFA walks; built once per engine."""

    ids: np.ndarray  # [N] token ids of non-empty tokens, longest first
    table: np.ndarray  # [N, L] uint8 token bytes, zero padded
    longer_than: np.ndarray  # [L] how many tokens are longer than each byte position
    vocab_size: int

    @classmethod
    def from_vocab(cls, vocab: TokenVocab) -> "VocabTable":
        ids, table, lengths = vocab.padded_bytes()
        longer_than = np.array([(lengths > p).sum() for p in range(table.shape[1])], dtype=np.int64)
        return cls(ids, table, longer_than, vocab.vocab_size)


class TokenIndex:
    def __init__(self, dfa: ByteDFA, vocab: VocabTable, eos_token_ids: tuple[int, ...]) -> None:
        self.dfa = dfa
        self.vocab = vocab
        self.eos_token_ids = eos_token_ids
        self._rows: dict[int, np.ndarray] = {}

    def allowed_tokens(self, state: int) -> np.ndarray:
        """Ids of the tokens that keep the DFA alive from ``state``.

        Tokens are walked one byte position at a time, and those already dead
        are dropped after each position, so the cost follows the surviving
        tokens (most die on their first byte) rather than the whole table.
        """
        table, next_state = self.vocab.table, self.dfa.next_state
        rows = np.arange(len(self.vocab.ids))
        current = next_state[state, table[:, 0]]
        alive = current != DEAD
        rows, current = rows[alive], current[alive]
        for position in range(1, table.shape[1]):
            # rows are ascending and tokens sorted longest first, so the ones long enough lead
            count = int(np.searchsorted(rows, self.vocab.longer_than[position]))
            if count == 0:
                break
            current[:count] = next_state[current[:count], table[rows[:count], position]]
            alive = current != DEAD
            rows, current = rows[alive], current[alive]
        return self.vocab.ids[rows]

    def mask_row(self, state: int) -> np.ndarray:
        """Packed int32 bitmask row of ``state``: tokens that keep the DFA alive, plus EOS if accepting."""
        row = self._rows.get(state)
        if row is None:
            allowed = np.zeros(self.vocab.vocab_size, dtype=bool)
            allowed[self.allowed_tokens(state)] = True
            if self.dfa.accepting[state]:
                allowed[list(self.eos_token_ids)] = True
            row = pack_allowed(allowed)
            self._rows[state] = row
        return row

    @property
    def num_states_indexed(self) -> int:
        return len(self._rows)
