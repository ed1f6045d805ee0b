"""Packed bitmasks: layout, unpacking, and masking a batch of logits in one operation."""

from __future__ import annotations

import numpy as np
import torch
import xgrammar as xgr

from moeframe.constrain.bitmask import allocate_bitmask, apply_bitmask, bitmask_width, pack_allowed, unpack_bitmask


def test_pack_allowed_sets_bit_t_mod_32_of_word_t_div_32():
    rng = np.random.default_rng(0)
    allowed = rng.random(100) < 0.3
    words = pack_allowed(allowed)
    assert words.shape == (bitmask_width(100),) and words.dtype == np.int32
    for t in range(128):
        bit = (int(words[t // 32]) >> (t % 32)) & 1
        assert bit == (t < 100 and allowed[t])


def test_unpack_inverts_pack():
    rng = np.random.default_rng(1)
    allowed = rng.random((3, 77)) < 0.5
    packed = torch.from_numpy(np.stack([pack_allowed(row) for row in allowed]))
    assert torch.equal(unpack_bitmask(packed, 77), torch.from_numpy(allowed))


def test_apply_bitmask_sets_disallowed_logits_to_minus_inf_and_keeps_the_rest():
    rng = np.random.default_rng(2)
    vocab = 70
    allowed = rng.random((4, vocab)) < 0.4
    bitmask = allocate_bitmask(5, vocab)  # row 4 is an unconstrained request
    for row in range(4):
        bitmask[row] = torch.from_numpy(pack_allowed(allowed[row]))
    logits = torch.randn(5, vocab)
    expected = logits.clone()
    for row in range(4):
        for t in range(vocab):
            if not allowed[row, t]:
                expected[row, t] = float("-inf")
    apply_bitmask(logits, bitmask)
    assert torch.equal(logits, expected)


def test_apply_bitmask_matches_xgrammar_kernel():
    vocab = 1000
    bitmask = torch.randint(-(2**31), 2**31 - 1, (6, bitmask_width(vocab)), dtype=torch.int32)
    ours = torch.randn(6, vocab)
    theirs = ours.clone()
    apply_bitmask(ours, bitmask)
    xgr.apply_token_bitmask_inplace(theirs, bitmask)
    assert torch.equal(ours, theirs)
