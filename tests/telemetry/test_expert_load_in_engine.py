"""runner.batched_load_record: an engine records the same expert load with one count per forward or one per layer."""

from __future__ import annotations

import pytest

from moeframe import Engine, SamplingParams


def expert_load(preset_path, router: str, batched: bool) -> tuple[dict, list]:
    engine = Engine.from_overrides([
        f"model.path={preset_path}", "device=cpu", "dtype=float32", f"router={router}",
        f"runner.batched_load_record={str(batched).lower()}",
    ])  # fmt: skip
    engine.generate(["a b c", "hello there"], SamplingParams(max_new_tokens=3, ignore_eos=True))
    recorder = engine.built.recorder
    assert recorder.batched == batched and not recorder.pending
    return recorder.stats(), recorder.dropped_counts().tolist()


@pytest.mark.parametrize(("preset", "router"), [("tiny-olmoe", "expert_choice"), ("tiny-deepseek-v3", "top2")])
def test_batched_and_per_layer_recording_give_an_engine_the_same_expert_load(preset, router, checkpoint_factory):
    path = checkpoint_factory(preset)
    batched, per_layer = expert_load(path, router, True), expert_load(path, router, False)
    assert batched == per_layer
    assert batched[0]["total"]["kept"] > 0
