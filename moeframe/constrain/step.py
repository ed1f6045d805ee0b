"""What the engine calls each decode step: mask a batch's logits, then take forced runs.

One bitmask row per batch row; rows of unconstrained requests stay all ones,
and the whole bitmask is applied to the logits in one operation on their
device (as SGLang and vLLM do with xgrammar's bitmask). A batch without any
constrained request costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moeframe.constrain.base import ConstraintState
from moeframe.constrain.bitmask import ALL_ALLOWED, allocate_bitmask, apply_bitmask
from moeframe.constrain.errors import DeadEndError


def mask_logits(
    logits: torch.Tensor, states: Sequence[ConstraintState | None], bitmask: torch.Tensor | None = None
) -> dict[int, DeadEndError]:
    """Restrict ``logits`` [B, V] in place to what each row's state allows (None: unconstrained row).

    ``bitmask`` is an optional reusable CPU int32 buffer of at least [B, ceil(V/32)].
    Returns the rows whose constraint allows no token, with the error each
    request must end with; their logits are all masked, so no token may be
    sampled from them.
    """
    if all(state is None for state in states):
        return {}
    batch, vocab_size = logits.shape
    if len(states) != batch:
        raise ValueError(f"{len(states)} states for {batch} logit rows")
    if bitmask is None:
        bitmask = allocate_bitmask(batch, vocab_size)
    bitmask = bitmask[:batch]
    dead: dict[int, DeadEndError] = {}
    for row, state in enumerate(states):
        if state is None:
            bitmask[row] = ALL_ALLOWED
        else:
            state.fill_bitmask(bitmask, row)
            error = state.dead_end(bitmask, row)
            if error is not None:
                dead[row] = error
    apply_bitmask(logits, bitmask)
    return dead


def take_forced_tokens(state: ConstraintState, max_tokens: int) -> list[int]:
    """The forced run (at most ``max_tokens``) with ``state`` advanced past it; [] when none.

    The engine appends these tokens to the request and runs them as one extend
    step (jump-forward decoding); see :mod:`moeframe.constrain.jump_forward`.
    """
    forced = state.forced_continuation()[: max(max_tokens, 0)]
    for taken, token in enumerate(forced):
        if not state.advance(token):
            state.rollback(taken)
            return []
    return forced
