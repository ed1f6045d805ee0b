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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from moeframe.constrain import CONSTRAINTS
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.dfa import DEAD, START, ByteDFA, compile_dfa
from moeframe.constrain.json_regex import schema_to_regex
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
    # longest forced run one jump appends, in bytes
    max_forced_bytes: int = 256
    cache_size: int = 256

    def __post_init__(self) -> None:
        for name in ("max_whitespace", "json_max_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_dfa_states", "max_forced_bytes", "cache_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


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
        regex = None
        if spec.kind == "regex":
            regex = spec.regex
        elif spec.kind in ("json_schema", "json_object"):
            regex = schema_to_regex(spec.schema(), self.params.max_whitespace, self.params.json_max_depth)
        elif spec.kind == "structural_tag":
            regex = structural_tag_regex(spec.structural_tag, self._schema_regex)
        elif spec.kind == "grammar":
            raise RequestError("constraint backend 'fsm' handles regular languages only; EBNF grammars need constraint=xgrammar")
        if regex is not None:
            tree = parse_regex(regex)
        else:
            tree = Alt(tuple(literal(choice) for choice in spec.choices or []))
        dfa = compile_dfa(tree, self.params.max_dfa_states)
        return CompiledFSM(dfa, TokenIndex(dfa, self.table, self.eos_token_ids), regex)

    def _schema_regex(self, schema: dict) -> str:
        return schema_to_regex(schema, self.params.max_whitespace, self.params.json_max_depth)

    def new_state(self, compiled: CompiledFSM) -> FSMState:
        return FSMState(compiled, self.vocab, self.eos_token_ids, self.params.max_forced_bytes)


@CONSTRAINTS.register("fsm", params=FSMParams)
def build_fsm(params: FSMParams, tokenizer: object, vocab_size: int, eos_token_ids: tuple[int, ...]) -> FSMBackend:
    return FSMBackend(params, TokenVocab.from_tokenizer(tokenizer, vocab_size), tuple(eos_token_ids))
