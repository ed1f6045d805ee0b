"""``constraint=none``: the no-constraint baseline of an ablation; constrained requests are refused.

Unconstrained requests never touch a backend (their bitmask rows stay all
ones), so this backend exists only to say clearly why a request asking for
structure cannot be served by this run.
"""

from __future__ import annotations

from moeframe.constrain import CONSTRAINTS
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.vocab import TokenVocab
from moeframe.errors import RequestError
from moeframe.registry import NoParams


class NoConstraintBackend(ConstraintBackend):
    def _compile(self, spec: ConstraintSpec) -> None:
        raise RequestError(
            f"this engine runs with constraint=none and cannot serve a {spec.kind} constraint; "
            f"choose constraint={'|'.join(n for n in CONSTRAINTS.names() if n != 'none')}"
        )

    def new_state(self, compiled: None) -> ConstraintState:
        raise RequestError("constraint=none has no constraint states")


@CONSTRAINTS.register("none")
def build_none(params: NoParams, tokenizer: object, vocab_size: int, eos_token_ids: tuple[int, ...]) -> NoConstraintBackend:
    return NoConstraintBackend(TokenVocab.from_tokenizer(tokenizer, vocab_size), tuple(eos_token_ids), False, 1)
