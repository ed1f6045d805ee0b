"""The shipped trained presets, on which the studies' quality figures stand: their held-out text is
text they never trained on, they predict it far better than chance, and routing matters to them."""

from __future__ import annotations

import json

import pytest

from moeframe import Engine
from moeframe.model.presets import ensure_checkpoint, trained_presets
from moeframe.training.corpus import shipped_documents, split_by_file
from moeframe.training.recipes import get_recipe
from moeframe.workloads.fidelity import measure_fidelity, scoring_text

SHIPPED = trained_presets("shipped")


@pytest.mark.parametrize("preset", SHIPPED)
def test_heldout_text_comes_from_files_outside_the_training_split(preset: str) -> None:
    folder = ensure_checkpoint(preset)
    summary = json.loads((folder / "train_result.json").read_text())
    train, held = split_by_file(shipped_documents(), get_recipe(preset).heldout_fraction)
    assert summary["data"]["heldout_files"] == [d.path for d in held]
    heldout_text = (folder / "heldout.txt").read_text()
    assert heldout_text.startswith(held[0].text[:1000])
    assert not any(d.text[:2000] in heldout_text for d in train)


@pytest.mark.parametrize("preset", [p for p in SHIPPED if get_recipe(p).config_class != "LlamaConfig"])
def test_native_routing_predicts_heldout_text_and_random_routing_doubles_perplexity(preset: str) -> None:
    engine = Engine.from_overrides([f"model={preset}", "device=cpu", "dtype=float32", "router=random", "cache=none"])
    text, heldout = scoring_text(engine, None)
    got = measure_fidelity(engine, text, chunk_tokens=128, max_chunks=4)
    assert heldout
    assert got["perplexity_native"] <= engine.spec.vocab_size / 10
    assert got["perplexity"] >= 2 * got["perplexity_native"]
    assert got["next_token_accuracy_native"] > got["next_token_accuracy"]
