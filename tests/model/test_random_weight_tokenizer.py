"""Random-weight presets carry a tokenizer of exactly their vocabulary, so text workloads run on real shapes."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from moeframe import Engine, SamplingParams
from moeframe.model.presets import PRESETS, ensure_tokenizer, preset_config
from moeframe.model.tokenizer import BPE_TRAINED_MAX, EOS_TOKEN, vocab_matched_tokenizer
from moeframe.workloads import WORKLOADS

REAL_PRESETS = sorted(name for name, preset in PRESETS.items() if preset.config_only)
TEXT = "Mixture-of-experts models route each token to a few experts.\n"


def first_eos(name: str) -> int:
    eos = preset_config(name).eos_token_id
    return eos[0] if isinstance(eos, (list, tuple)) else eos


@pytest.mark.parametrize("name", REAL_PRESETS)
def test_each_real_preset_gets_its_exact_vocabulary_with_the_configs_eos(name: str, tmp_path) -> None:
    folder = ensure_tokenizer(name, cache_dir=tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    config = preset_config(name)
    assert len(tokenizer) == config.vocab_size
    assert tokenizer.eos_token_id == first_eos(name)
    ids = tokenizer.encode(TEXT)
    assert tokenizer.decode(ids) == TEXT and max(ids) < BPE_TRAINED_MAX
    # the last ids are fillers: each decodes, whatever a random model samples
    assert all(tokenizer.decode([i]) for i in range(config.vocab_size - 64, config.vocab_size) if i != first_eos(name))


def test_fillers_are_distinct_tokens_no_text_encodes_to() -> None:
    tokenizer = vocab_matched_tokenizer(9000, eos_id=8999)
    vocab = tokenizer.get_vocab()
    assert sorted(vocab.values()) == list(range(9000)) and vocab[EOS_TOKEN] == 8999
    fillers = [token for token, i in vocab.items() if BPE_TRAINED_MAX <= i < 8999]
    assert len(fillers) == 9000 - BPE_TRAINED_MAX - 1 and all(len(t) == 2 for t in fillers)
    assert max(tokenizer.encode("".join(tokenizer.decode([vocab[t]]) for t in fillers[:50])).ids) < BPE_TRAINED_MAX


def test_ensure_tokenizer_reuses_its_cached_folder(tmp_path) -> None:
    first = ensure_tokenizer("mixtral-8x7b", cache_dir=tmp_path)
    stamp = (first / "tokenizer.json").stat().st_mtime_ns
    assert ensure_tokenizer("mixtral-8x7b", cache_dir=tmp_path) == first
    assert (first / "tokenizer.json").stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1


def test_random_weight_engine_runs_a_text_workload(tmp_path) -> None:
    """The real presets' path on a shape this machine holds: random weights and a made tokenizer, no checkpoint."""
    engine = Engine.from_overrides(
        ["model=tiny-qwen2-moe", "model.random_weights=true", f"model.cache_dir={tmp_path}", "device=cpu",
         "workload.num_requests=2", "workload.max_new_tokens=3", "workload.progress=false", "workload.fidelity_chunks=2",
         "workload.fidelity_chunk_tokens=16"]
    )  # fmt: skip
    assert engine.built.checkpoint is None and len(engine.tokenizer) == engine.spec.vocab_size == 2112
    out = engine.generate(["The capital of France is"], SamplingParams(max_new_tokens=4, ignore_eos=True))[0]
    assert len(out.token_ids) == 4 and isinstance(out.text, str)
    metrics = WORKLOADS.build(engine.cfg.workload).run(engine)
    assert metrics["generated_tokens"] == 6 and metrics["fidelity_positions"] == 32
