"""Parallel strategies in a world of one (no launcher): the same outputs as single, and bad params fail at start."""

from __future__ import annotations

import pytest
import torch

from moeframe import Engine, SamplingParams
from moeframe.errors import ConfigError


def engine(path, *overrides: str) -> Engine:
    return Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", "cache=none", *overrides])


@pytest.mark.parametrize("strategy", ["tensor", "expert"])
def test_world_of_one_matches_single(checkpoint_factory, strategy: str) -> None:
    path = checkpoint_factory("tiny-qwen2-moe")
    ids = torch.randint(1, 2000, (13,), generator=torch.Generator().manual_seed(0)).tolist()
    single, ours = engine(path, "parallel=single"), engine(path, f"parallel={strategy}")
    torch.testing.assert_close(ours.score(ids), single.score(ids), rtol=1e-5, atol=1e-6)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True)
    assert ours.generate([ids], params)[0].token_ids == single.generate([ids], params)[0].token_ids
    assert ours.stats()["parallel"]["world_size"] == 1


def test_redundant_experts_without_a_load_file_is_a_config_error(checkpoint_factory) -> None:
    with pytest.raises(ConfigError, match="redundant_experts > 0 needs load_file"):
        engine(checkpoint_factory("tiny-mixtral"), "parallel=expert", "parallel.redundant_experts=2")


def test_load_file_of_another_model_shape_is_a_config_error(checkpoint_factory, tmp_path) -> None:
    (tmp_path / "counts.json").write_text('{"counts": [[1, 2, 3]]}')
    with pytest.raises(ConfigError, match="layers x experts"):
        engine(
            checkpoint_factory("tiny-mixtral"),
            "parallel=expert",
            "parallel.redundant_experts=1",
            f"parallel.load_file={tmp_path / 'counts.json'}",
        )


def test_expert_parallel_on_a_dense_model_is_a_config_error(checkpoint_factory) -> None:
    with pytest.raises(ConfigError, match="needs an MoE model"):
        engine(checkpoint_factory("tiny-llama"), "parallel=expert")
