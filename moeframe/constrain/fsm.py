"""``constraint=fsm``: our own regular-language backend (the Outlines design).

Every spec becomes a byte-level DFA: a regex through our parser, a JSON schema
through :mod:`moeframe.constrain.json_regex` first, a structural tag (tool
calls) through :func:`~moeframe.constrain.structural_tag.structural_tag_regex`, and a choice list as the
DFA of the alternation of its strings, which subset construction turns into
exactly the byte trie of the choices. The token level comes from
:class:`TokenIndex`, so a choice is accepted in any tokenisation, not only the
one the tokenizer would pick for it alone (a trie of canonical token
sequences would reject the others). EBNF grammars are not regular and are
refused; use ``constraint=xgrammar`` for them.

A JSON schema is first brought to its normal form and checked keyword by
keyword (:mod:`moeframe.constrain.schema_support`): what the regex cannot
enforce is refused by name, never dropped. Compilation is bounded: the regex
by ``max_regex_chars`` as it is built, the automata by ``max_dfa_states``
as they grow, and the whole by ``compile_timeout_s``; past any of them the
request gets a :class:`BudgetError`. A regex or schema whose language is
empty is refused as :class:`UnsatisfiableError` (the DFA has no accepting
state), so no request can start on a constraint that allows no output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from moeframe.constrain import CONSTRAINTS
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.dfa import DEAD, START, ByteDFA, compile_dfa
from moeframe.constrain.errors import UnsatisfiableError
from moeframe.constrain.json_regex import schema_to_regex
from moeframe.constrain.schema_closed import close_objects
from moeframe.constrain.schema_normal import normalize_schema
from moeframe.constrain.schema_support import check_supported
from moeframe.constrain.regex_syntax import Alt, literal, parse_regex
from moeframe.constrain.structural_tag import structural_tag_regex
from moeframe.constrain.token_index import TokenIndex, VocabTable
from moeframe.constrain.vocab import TokenVocab
from moeframe.errors import RequestError


@dataclass(frozen=True)
class FSMParams:
    jump_forward: bool = True
    # whitespace characters allowed around JSON punctuation; 0 = compact
    max_whitespace: int = 0
    # nesting depth of free-form JSON values (json_object, untyped schemas)
    json_max_depth: int = 2
    max_dfa_states: int = 20000
    # a schema's regex may not pass this many characters (checked as it is built); one
    # longer than ~0.4 x 8 x max_dfa_states would overflow the NFA anyway, after seconds of parsing
    max_regex_chars: int = 500_000
    # wall-clock budget of one compilation, seconds
    compile_timeout_s: float = 10.0
    # longest forced run one jump appends, in bytes
    max_forced_bytes: int = 256
    cache_size: int = 256

    def __post_init__(self) -> None:
        for name in ("max_whitespace", "json_max_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_dfa_states", "max_regex_chars", "max_forced_bytes", "cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.compile_timeout_s <= 0:
            raise ValueError(f"compile_timeout_s must be > 0, got {self.compile_timeout_s}")


@dataclass
class CompiledFSM:
    dfa: ByteDFA
    index: TokenIndex
    regex: str | None  # the regex compiled, when the spec went through one


class FSMState(ConstraintState):
    def __init__(self, compiled: CompiledFSM, vocab: TokenVocab, eos_token_ids: tuple[int, ...], max_forced_bytes: int) -> None:
        super().__init__(vocab, eos_token_ids)
        self.compiled = compiled
        self.state = START
        self.history: list[int] = []
        self.max_forced_bytes = max_forced_bytes

    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        bitmask[row] = torch.from_numpy(self.compiled.index.mask_row(self.state))

    def advance(self, token_id: int) -> bool:
        if token_id in self.eos_token_ids:
            ok = self.is_terminal()
            if ok:
                self.history.append(self.state)
            return ok
        data = self.vocab.token_bytes[token_id] if 0 <= token_id < self.vocab.vocab_size else b""
        nxt = self.compiled.dfa.walk(self.state, data) if data else DEAD
        if nxt == DEAD:
            return False
        self.history.append(self.state)
        self.state = nxt
        return True

    def is_terminal(self) -> bool:
        return bool(self.compiled.dfa.accepting[self.state])

    def forced_bytes(self) -> bytes:
        dfa, state, out = self.compiled.dfa, self.state, bytearray()
        while len(out) < self.max_forced_bytes and not dfa.accepting[state]:
            live = np.flatnonzero(dfa.next_state[state])
            if len(live) != 1:
                break
            out.append(int(live[0]))
            state = int(dfa.next_state[state, live[0]])
        return bytes(out)

    def rollback(self, num_tokens: int) -> None:
        if num_tokens > len(self.history):
            raise ValueError(f"cannot roll back {num_tokens} tokens, only {len(self.history)} were accepted")
        for _ in range(num_tokens):
            self.state = self.history.pop()


class FSMBackend(ConstraintBackend):
    def __init__(self, params: FSMParams, vocab: TokenVocab, eos_token_ids: tuple[int, ...]) -> None:
        super().__init__(vocab, eos_token_ids, params.jump_forward, params.cache_size)
        self.params = params
        self.table = VocabTable.from_vocab(vocab)

    def _compile(self, spec: ConstraintSpec) -> CompiledFSM:
        deadline = time.monotonic() + self.params.compile_timeout_s
        regex = None
        if spec.kind == "regex":
            regex = spec.regex
        elif spec.kind in ("json_schema", "json_object"):
            regex = self._schema_regex(spec.schema())
        elif spec.kind == "structural_tag":
            regex = structural_tag_regex(spec.structural_tag, self._schema_regex)
        elif spec.kind == "grammar":
            raise RequestError("constraint backend 'fsm' handles regular languages only; EBNF grammars need constraint=xgrammar")
        if regex is not None:
            tree = parse_regex(regex, deadline)
        else:
            tree = Alt(tuple(literal(choice) for choice in spec.choices or []))
        dfa = compile_dfa(tree, self.params.max_dfa_states, deadline)
        if not dfa.accepting.any():
            raise UnsatisfiableError(f"the {spec.kind.replace('_', ' ')} matches no output at all (its language is empty)")
        return CompiledFSM(dfa, TokenIndex(dfa, self.table, self.eos_token_ids), regex)

    def _schema_regex(self, schema: dict) -> str:
        """The regex of ``schema``'s normal form, refused by keyword where fsm cannot enforce it."""
        normal = close_objects(normalize_schema(schema))
        check_supported(normal, "fsm")
        p = self.params
        return schema_to_regex(normal, p.max_whitespace, p.json_max_depth, p.max_regex_chars, p.compile_timeout_s)

    def new_state(self, compiled: CompiledFSM) -> FSMState:
        return FSMState(compiled, self.vocab, self.eos_token_ids, self.params.max_forced_bytes)


@CONSTRAINTS.register("fsm", params=FSMParams)
def build_fsm(params: FSMParams, tokenizer: object, vocab_size: int, eos_token_ids: tuple[int, ...]) -> FSMBackend:
    return FSMBackend(params, TokenVocab.from_tokenizer(tokenizer, vocab_size), tuple(eos_token_ids))
