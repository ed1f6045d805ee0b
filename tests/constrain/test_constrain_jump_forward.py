"""Jump-forward: same text, fewer forward steps; forced runs, UTF-8 boundaries, re-tokenisation."""

from __future__ import annotations

import pytest

from constrain_cases import LONG_KEYS, REGEXES, SCHEMAS
from constrain_helpers import decode, random_model, text_keyed_byte_model
from moeframe.constrain import ConstraintSpec, allocate_bitmask
from moeframe.constrain.jump_forward import encode_forced, retokenize
from moeframe.constrain.simulate import constrained_generate

SPECS = [ConstraintSpec(json_schema=s) for s, _ in SCHEMAS] + [ConstraintSpec(regex=r) for r in REGEXES[:10]]


@pytest.mark.parametrize("spec", SPECS, ids=[f"spec{i}" for i in range(len(SPECS))])
def test_jump_forward_writes_the_same_text_in_no_more_steps(backend, eos_id, spec):
    model = text_keyed_byte_model(backend, seed=7)
    plain, plain_steps = constrained_generate(backend, spec, model, 800, eos_id, jump_forward=False)
    jumped, jumped_steps = constrained_generate(backend, spec, model, 800, eos_id, jump_forward=True)
    assert plain[-1] == eos_id and jumped[-1] == eos_id
    assert decode(backend, jumped, eos_id) == decode(backend, plain, eos_id)
    assert jumped_steps <= plain_steps


def test_jump_forward_saves_most_steps_on_long_fixed_keys(backend, eos_id):
    spec = ConstraintSpec(json_schema=LONG_KEYS)
    for seed in range(3):
        model = random_model(backend, seed, length_penalty=0.5)
        plain, plain_steps = constrained_generate(backend, spec, model, 800, eos_id, jump_forward=False)
        jumped, jumped_steps = constrained_generate(backend, spec, model, 800, eos_id, jump_forward=True)
        assert plain[-1] == eos_id and jumped[-1] == eos_id
        # the keys, quotes, colons and the enum's shared prefix are ~140 forced bytes
        assert jumped_steps * 2 < plain_steps, (jumped_steps, plain_steps)


def test_fresh_object_state_forces_its_first_key(backend):
    state = backend.new_state(backend.compile(ConstraintSpec(json_schema=LONG_KEYS)))
    assert state.forced_bytes() == b'{"customer_identification_number":'
    assert backend.vocab.decode(state.forced_continuation()) == b'{"customer_identification_number":'


def test_nothing_is_forced_where_the_next_byte_is_free_or_the_output_may_end(backend):
    free = backend.new_state(backend.compile(ConstraintSpec(regex=r"[ab]c")))
    assert free.forced_continuation() == []
    may_end = backend.new_state(backend.compile(ConstraintSpec(regex=r"ab(cd)?")))
    assert all(may_end.advance(t) for t in backend.vocab.encode("ab"))
    assert may_end.is_terminal() and may_end.forced_continuation() == []


def test_forced_run_stops_before_an_incomplete_character(backends):
    spec = ConstraintSpec(regex="\u65e5[\u672c\u672d]")
    fsm = backends["fsm"].new_state(backends["fsm"].compile(spec))
    assert fsm.forced_bytes() == "\u65e5".encode() + "\u672c".encode()[:2]
    assert backends["fsm"].vocab.decode(fsm.forced_continuation()) == "\u65e5".encode()
    # xgrammar 0.2.8 cannot report a run ending mid-character, so it forces nothing there
    xgr = backends["xgrammar"].new_state(backends["xgrammar"].compile(spec))
    assert xgr.forced_continuation() == []


def test_encode_forced_gives_nothing_when_starting_mid_character(backend):
    assert encode_forced(backend.vocab, "\u65e5".encode()[1:]) == []


def test_rollback_restores_the_earlier_mask(backend):
    state = backend.new_state(backend.compile(ConstraintSpec(json_schema=SCHEMAS[0][0])))
    masks = allocate_bitmask(2, backend.vocab_size)
    ids = backend.vocab.encode('{"name":"Ad')
    assert all(state.advance(t) for t in ids[:2])
    state.fill_bitmask(masks, 0)
    assert all(state.advance(t) for t in ids[2:])
    state.rollback(len(ids) - 2)
    state.fill_bitmask(masks, 1)
    assert masks[0].tolist() == masks[1].tolist()


def test_sglang_style_retokenisation_resyncs_the_state(backend):
    spec = ConstraintSpec(json_schema=LONG_KEYS)
    output = [backend.vocab.token_bytes.index(b"{"), backend.vocab.token_bytes.index(b'"')]
    state = backend.new_state(backend.compile(spec))
    assert all(state.advance(t) for t in output)
    kept, tail = retokenize(backend.vocab, output, state.forced_bytes())
    assert backend.vocab.decode(output[:kept] + tail) == b'{"customer_identification_number":'
    state.rollback(len(output) - kept)
    assert all(state.advance(t) for t in tail)
    direct = backend.new_state(backend.compile(spec))
    assert all(direct.advance(t) for t in backend.vocab.encode('{"customer_identification_number":'))
    masks = allocate_bitmask(2, backend.vocab_size)
    state.fill_bitmask(masks, 0)
    direct.fill_bitmask(masks, 1)
    assert masks[0].tolist() == masks[1].tolist()
