"""Constrained decoding in the engine loop: masks, and the canonical tokenisation of forced runs.

When a constraint forces a string (a fixed JSON key, say), many token
sequences spell it. Both decoding modes take the same one, built token by
token: the first token of the constraint's forced continuation, then the
first of the next, and so on. Without jump-forward the mask allows only that
token at each step; with jump-forward the whole run is appended at once and
computed in one extend step (SGLang's compressed FSM). Outputs are then the
same token for token with jump-forward on or off, and the forced text is
never split at a place the tokenizer would not split it, which is the
boundary problem SGLang's re-tokenisation addresses by re-encoding the
output: here the boundary is made canonical before any token is committed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from moeframe.engine.request import Request

ApplyBitmask = Callable[[torch.Tensor, torch.Tensor], None]


def mask_constrained(logits: torch.Tensor, reqs: list[Request], apply_bitmask: ApplyBitmask) -> dict[int, str]:
    """Restrict each constrained row to its state's tokens (only the canonical token in a forced run).

    Returns row -> error for the rows whose constraint allows no token at
    all (``ConstraintState.dead_end``) or raised while filling its mask: the
    engine ends those requests alone with an error. Such a row is left
    unmasked, so sampling it stays defined; its token is never used.
    """
    constrained = [i for i, r in enumerate(reqs) if r.constraint is not None]
    if not constrained:
        return {}
    words = (logits.shape[-1] + 31) // 32
    bitmask = torch.full((len(reqs), words), -1, dtype=torch.int32)
    failed: dict[int, str] = {}
    for i in constrained:
        try:
            forced = reqs[i].constraint.forced_continuation()
            if forced:
                bitmask[i] = 0
                bitmask[i, forced[0] // 32] = single_bit_word(forced[0] % 32)
                continue
            reqs[i].constraint.fill_bitmask(bitmask, i)
        except Exception as err:  # a backend failing on one request's constraint fails that request only
            failed[i] = f"the constraint failed: {type(err).__name__}: {err}"
        else:
            dead_end = reqs[i].constraint.dead_end(bitmask, i)
            if dead_end is not None:
                failed[i] = str(dead_end)
        if i in failed:
            bitmask[i] = -1
    apply_bitmask(logits, bitmask.to(logits.device))
    return failed


def single_bit_word(bit: int) -> int:
    """The int32 value whose only set bit is ``bit`` (bit 31 is the sign bit)."""
    return (1 << bit) - (1 << 32 if bit == 31 else 0)


def forced_run(req: Request, limit: int) -> list[int]:
    """Advance the request's constraint through its forced run, one canonical token at a time."""
    run: list[int] = []
    state = req.constraint
    while len(run) < limit:
        forced = state.forced_continuation()
        if not forced or not state.advance(forced[0]):
            break
        run.append(forced[0])
    return run
