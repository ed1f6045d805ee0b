"""The fsm token index against brute force, and the two backends' masks against each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from constrain_cases import REGEXES
from constrain_helpers import random_model
from moeframe.constrain import ConstraintSpec, allocate_bitmask
from moeframe.constrain.bitmask import unpack_bitmask
from moeframe.constrain.dfa import DEAD


def brute_force_allowed(backend, compiled, state: int, eos_id: int) -> np.ndarray:
    allowed = np.zeros(backend.vocab_size, dtype=bool)
    for t, data in enumerate(backend.vocab.token_bytes):
        allowed[t] = bool(data) and compiled.dfa.walk(state, data) != DEAD
    allowed[eos_id] = bool(compiled.dfa.accepting[state])
    return allowed


@pytest.mark.parametrize("pattern", [r"[a-z]+@[a-z]+\.(com|org)", r"\d{2,4}", r"[^\n]{1,5}", r"(ab|cd)*e?"])
def test_fsm_mask_of_every_state_equals_walking_each_token(backends, eos_id, pattern):
    backend = backends["fsm"]
    compiled = backend.compile(ConstraintSpec(regex=pattern))
    for state in range(1, min(compiled.dfa.num_states, 40)):
        row = torch.from_numpy(compiled.index.mask_row(state)).unsqueeze(0)
        got = unpack_bitmask(row, backend.vocab_size)[0].numpy()
        assert np.array_equal(got, brute_force_allowed(backend, compiled, state, eos_id)), state


@pytest.mark.parametrize("pattern", REGEXES)
def test_fsm_and_xgrammar_masks_agree_along_a_random_trajectory(backends, eos_id, pattern):
    spec = ConstraintSpec(regex=pattern)
    fsm, xgr = (backends[n].new_state(backends[n].compile(spec)) for n in ("fsm", "xgrammar"))
    model = random_model(backends["fsm"], seed=3, length_penalty=1.0)
    masks = allocate_bitmask(2, backends["fsm"].vocab_size)
    token_ids: list[int] = []
    for _ in range(60):
        fsm.fill_bitmask(masks, 0)
        xgr.fill_bitmask(masks, 1)
        allowed = unpack_bitmask(masks, backends["fsm"].vocab_size)
        assert torch.equal(allowed[0], allowed[1]), f"after {backends['fsm'].vocab.decode(token_ids)!r}"
        logits = model(token_ids).masked_fill(~allowed[0], float("-inf"))
        token = int(torch.argmax(logits))
        if token == eos_id:
            break
        assert fsm.advance(token) and xgr.advance(token)
        token_ids.append(token)
