"""The decode step's fast inputs: slot mirrors, build_decode, and the CUDA graphs' packed, padded layout.

The graphs themselves need CUDA (tests/gpu); what they read is checked here
on the CPU: the packed buffer, viewed the way the graphs view it, describes
the same batch as ``ForwardBatch.build`` plus padding rows that touch only the
scratch slot, and a model run over those views gives the eager logits.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from moeframe import SamplingParams
from moeframe.attention.batch import ForwardBatch
from moeframe.engine.cuda_graph import DecodeInputLayout
from moeframe.engine.slot_array import SlotArray
from moeframe.model.layers.context import ForwardContext

SETTINGS = settings(max_examples=80, deadline=None)
FIELDS = ("input_ids", "positions", "out_slots", "q_indptr", "kv_indptr", "kv_indices", "logits_indices")

decode_steps = st.lists(
    st.tuples(st.integers(0, 500), st.lists(st.integers(0, 10_000), min_size=1, max_size=12)), min_size=1, max_size=6
)


def assert_same_batch(got: ForwardBatch, want: ForwardBatch) -> None:
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        assert a.dtype == b.dtype and torch.equal(a, b), name
    assert got.q_lens == want.q_lens and got.kv_lens == want.kv_lens


@SETTINGS
@given(step=decode_steps)
def test_build_decode_equals_build_of_one_token_per_request(step):
    tokens = [t for t, _ in step]
    contexts = [c for _, c in step]
    want = ForwardBatch.build([[t] for t in tokens], contexts, "cpu")
    got = ForwardBatch.build_decode(tokens, [np.array(c, dtype=np.int64) for c in contexts], "cpu")
    assert_same_batch(got, want)
    assert got.is_decode


edits = st.lists(
    st.one_of(
        st.tuples(st.just("extend"), st.lists(st.integers(0, 99), max_size=3)),
        st.tuples(st.just("rebind"), st.lists(st.integers(0, 99), max_size=5)),
        st.tuples(st.just("replace_last"), st.integers(100, 199)),
    ),
    max_size=30,
)


@SETTINGS
@given(edits=edits)
def test_slot_array_mirrors_the_list_through_extends_rebinds_and_replaced_tails(edits):
    mirror, slots = SlotArray(), []
    for kind, arg in edits:
        if kind == "extend":
            slots.extend(arg)
        elif kind == "rebind":
            slots = list(arg)
        elif slots:
            slots[-1] = arg
        assert mirror.sync(slots).tolist() == slots


def unpack(layout: DecodeInputLayout, buf: torch.Tensor, bs: int) -> ForwardBatch:
    """The graph's static batch of size ``bs`` over ``buf``, with the lengths its indptr implies."""
    v = layout.views(buf, torch.int32)
    ptr = v.kv_indptr[: bs + 1]
    return ForwardBatch(
        input_ids=v.input_ids[:bs],
        positions=v.positions[:bs],
        out_slots=v.out_slots[:bs],
        q_indptr=torch.arange(bs + 1, dtype=torch.int32),
        kv_indptr=ptr.clone(),
        kv_indices=v.kv_indices[: int(ptr[-1])].clone(),
        logits_indices=torch.arange(bs),
        q_lens=[1] * bs,
        kv_lens=(ptr[1:] - ptr[:-1]).tolist(),
    )


@SETTINGS
@given(earlier=decode_steps, step=decode_steps, extra_pad=st.integers(0, 3))
def test_packed_inputs_are_the_batch_then_padding_rows_on_the_scratch_slot(earlier, step, extra_pad):
    scratch = 77_777
    layout = DecodeInputLayout(max_batch_size=9, max_context=12)
    buf = torch.full((layout.size,), -1, dtype=torch.int64)
    host = layout.views(buf.numpy(), np.int32)
    arrays = [[np.array(c, dtype=np.int64) for _, c in s] for s in (earlier, step)]
    layout.pack(host, [t for t, _ in earlier], arrays[0], len(earlier), scratch)  # leaves stale values behind
    b = len(step)
    bs = b + extra_pad
    used = layout.pack(host, [t for t, _ in step], arrays[1], bs, scratch)

    got = unpack(layout, buf, bs)
    want = ForwardBatch.build([[t] for t, _ in step], [c for _, c in step], "cpu")
    for name in ("input_ids", "positions", "out_slots"):
        assert torch.equal(getattr(got, name)[:b], getattr(want, name)), name
    assert torch.equal(got.kv_indptr[: b + 1], want.kv_indptr)
    assert torch.equal(got.kv_indices[: want.kv_indices.shape[0]], want.kv_indices)
    assert got.input_ids[b:].tolist() == [0] * extra_pad
    assert got.positions[b:].tolist() == [0] * extra_pad
    assert got.out_slots[b:].tolist() == [scratch] * extra_pad
    assert got.kv_lens[b:] == [1] * extra_pad
    assert got.kv_indices[want.kv_indices.shape[0] :].tolist() == [scratch] * extra_pad
    assert used == layout.kv_indices + int(got.kv_indptr[-1])  # one copy of this prefix uploads everything read


def test_packed_inputs_start_on_128_byte_boundaries():
    layout = DecodeInputLayout(max_batch_size=13, max_context=5)
    starts = [layout.input_ids, layout.positions, layout.out_slots, layout.kv_indptr, layout.kv_indices]
    assert all(s * 8 % 128 == 0 for s in starts)
    assert starts == sorted(starts) and layout.kv_indptr + 7 <= layout.kv_indices  # 14 int32 fit in 7 int64


@pytest.fixture(scope="module")
def engine(make_engine):
    # Overlap off: the test schedules a decode step by hand between steps, which needs no step in flight.
    return make_engine("cache=none", "cache.max_tokens=512", "runner.overlap=false")


@torch.inference_mode()
def test_a_padded_packed_decode_step_gives_the_eager_logits_and_touches_only_the_scratch_slot(engine):
    runner, pool, core = engine.built.runner, engine.built.pool, engine.core
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    for prompt in ([5, 9, 14, 3], [7, 7, 2], [11, 30, 4, 8, 19]):
        engine.add_request(prompt, params)
    for _ in range(3):
        engine.step()
    scheduled = core.scheduler.schedule()
    assert scheduled is not None and scheduled.num_new_tokens == [1, 1, 1]
    eager = runner.forward(runner.make_batch(scheduled))

    scratch = pool.alloc(1)[0]
    layout = DecodeInputLayout(max_batch_size=8, max_context=64)
    buf = torch.zeros(layout.size, dtype=torch.int64)
    layout.pack(layout.views(buf.numpy(), np.int32), *runner.decode_inputs(scheduled.requests), 5, scratch)
    before = [k.clone() for k in pool.k]
    padded = runner.model(ForwardContext(unpack(layout, buf, 5), pool.k, pool.v, runner.attend))
    torch.testing.assert_close(padded[:3], eager, rtol=1e-5, atol=1e-5)
    written = torch.tensor([r.slots[-1] for r in scheduled.requests] + [scratch])
    for k_new, k_old in zip(pool.k, before):
        untouched = torch.ones(pool.num_slots, dtype=torch.bool)
        untouched[written] = False
        assert torch.equal(k_new[untouched], k_old[untouched])
    pool.free([scratch])
    for req in list(core.requests.values()):
        core.abort(req.rid)

