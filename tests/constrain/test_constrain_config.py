"""Backends build from their yaml; bad values and unknown names fail at start."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moeframe.constrain import CONSTRAINTS
from moeframe.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "constraint"


@pytest.mark.parametrize("choice", ["xgrammar", "fsm", "none"])
def test_every_yaml_builds_its_backend(choice, tokenizer, eos_id):
    node = OmegaConf.load(CONF / f"{choice}.yaml")
    backend = CONSTRAINTS.build(node, tokenizer=tokenizer, vocab_size=4100, eos_token_ids=(eos_id,))
    assert backend.vocab_size == 4100
    assert backend.jump_forward == bool(node.get("jump_forward", False))


def test_every_registered_backend_has_a_yaml():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == CONSTRAINTS.names()


def test_unknown_backend_lists_the_choices(tokenizer, eos_id):
    with pytest.raises(ConfigError, match="fsm, none, xgrammar"):
        CONSTRAINTS.build({"name": "outlines"}, tokenizer=tokenizer, vocab_size=4100, eos_token_ids=(eos_id,))


@pytest.mark.parametrize(("name", "key", "value"), [("fsm", "max_whitespace", -1), ("xgrammar", "max_threads", 0), ("fsm", "json_max_depth", -2)])
def test_bad_param_fails_at_build(name, key, value, tokenizer, eos_id):
    with pytest.raises(ConfigError, match=key):
        CONSTRAINTS.build({"name": name, key: value}, tokenizer=tokenizer, vocab_size=4100, eos_token_ids=(eos_id,))


def test_vocab_size_smaller_than_the_tokenizer_fails(tokenizer, eos_id):
    with pytest.raises(ConfigError, match="vocab_size"):
        CONSTRAINTS.build({"name": "fsm"}, tokenizer=tokenizer, vocab_size=100, eos_token_ids=(eos_id,))
