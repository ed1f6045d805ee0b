"""Shared fixtures of the constraint tests: one trained byte-level BPE, both backends."""

from __future__ import annotations

import pytest

from moeframe.constrain import CONSTRAINTS, ConstraintBackend
from moeframe.model.tokenizer import EOS_TOKEN, train_tokenizer

TOKENIZER_VOCAB = 4096
MODEL_VOCAB = 4100  # the LM head is padded past the tokenizer, as real checkpoints often are


@pytest.fixture(scope="session")
def tokenizer():
    return train_tokenizer(TOKENIZER_VOCAB)


@pytest.fixture(scope="session")
def eos_id(tokenizer) -> int:
    return tokenizer.token_to_id(EOS_TOKEN)


@pytest.fixture(scope="session")
def backends(tokenizer, eos_id) -> dict[str, ConstraintBackend]:
    return {
        name: CONSTRAINTS.build({"name": name}, tokenizer=tokenizer, vocab_size=MODEL_VOCAB, eos_token_ids=(eos_id,))
        for name in ("fsm", "xgrammar")
    }


@pytest.fixture(scope="session", params=["fsm", "xgrammar"])
def backend(request, backends) -> ConstraintBackend:
    return backends[request.param]
