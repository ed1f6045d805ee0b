"""The engine's per-step calls: masking a mixed batch, taking forced runs."""

from __future__ import annotations

import torch

from constrain_cases import LONG_KEYS
from moeframe.constrain import ConstraintSpec, allocate_bitmask, apply_bitmask, mask_logits, take_forced_tokens


def test_mask_logits_masks_constrained_rows_and_leaves_the_others(backend):
    states = [
        backend.new_state(backend.compile(ConstraintSpec(regex=r"\d+"))),
        None,
        backend.new_state(backend.compile(ConstraintSpec(choices=["red", "blue"]))),
    ]
    logits = torch.randn(3, backend.vocab_size)
    expected = logits.clone()
    for row in (0, 2):
        one = allocate_bitmask(1, backend.vocab_size)
        states[row].fill_bitmask(one, 0)
        apply_bitmask(expected[row : row + 1], one)
    mask_logits(logits, states, allocate_bitmask(8, backend.vocab_size))
    assert torch.equal(logits, expected)
    assert torch.isfinite(logits[1]).all()


def test_mask_logits_of_an_unconstrained_batch_changes_nothing(backend):
    logits = torch.randn(2, backend.vocab_size)
    before = logits.clone()
    mask_logits(logits, [None, None])
    assert torch.equal(logits, before)


def test_take_forced_tokens_advances_the_state_and_respects_the_limit(backend):
    spec = ConstraintSpec(json_schema=LONG_KEYS)
    state = backend.new_state(backend.compile(spec))
    full = state.forced_continuation()
    limited = take_forced_tokens(state, 2)
    assert limited == full[:2]
    rest = take_forced_tokens(state, 1000)
    assert backend.vocab.decode(limited + rest) == b'{"customer_identification_number":'
    assert take_forced_tokens(state, 1000) == []  # the number's first digit is free
