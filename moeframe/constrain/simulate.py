"""An engine-free decoding loop with a constraint: what the engine does per step, minus the model.

Tests and the ``json_extract`` workload drive a constraint with logits from
any callable (a seeded random "model", or a real one) to check validity and
count forward steps. With ``jump_forward`` a forced run is appended without a
model call; the next call then stands for the engine's extend step over the
appended tokens, which also yields the next token's logits, so
``num_forward_steps`` counts model calls exactly as the engine would.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moeframe.constrain.base import ConstraintBackend, ConstraintSpec
from moeframe.constrain.bitmask import allocate_bitmask
from moeframe.constrain.step import mask_logits, take_forced_tokens

LogitsFn = Callable[[list[int]], torch.Tensor]


def constrained_generate(
    backend: ConstraintBackend,
    spec: ConstraintSpec,
    logits_fn: LogitsFn,
    max_tokens: int,
    eos_id: int,
    jump_forward: bool,
) -> tuple[list[int], int]:
    """Greedy constrained decoding: (token ids, ending with ``eos_id`` if it stopped; model calls made).

    ``logits_fn(token_ids)`` returns the [vocab_size] logits of the next token.
    Raises :class:`DeadEndError` where the constraint allows no token, and
    RuntimeError if the backend lets a token through that its own state then
    rejects (a bug, never a model's fault). The two calls per step are
    the engine's: :func:`mask_logits` and :func:`take_forced_tokens`.
    """
    state = backend.new_state(backend.compile(spec))
    bitmask = allocate_bitmask(1, backend.vocab_size)
    token_ids: list[int] = []
    num_forward_steps = 0
    while len(token_ids) < max_tokens:
        if jump_forward:
            token_ids += take_forced_tokens(state, max_tokens - len(token_ids))
            if len(token_ids) >= max_tokens:
                break
        logits = logits_fn(token_ids).reshape(1, -1).clone()
        num_forward_steps += 1
        dead = mask_logits(logits, [state], bitmask)
        if dead:
            raise dead[0]
        token = int(torch.argmax(logits[0]))
        if not state.advance(token):
            raise RuntimeError(f"state rejected token {token} that its own mask allowed")
        token_ids.append(token)
        if token == eos_id:
            break
    return token_ids, num_forward_steps
