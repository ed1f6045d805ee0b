"""Bad router options fail at build with a ConfigError that names the problem; every shipped yaml builds."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moeframe.errors import ConfigError
from moeframe.model.spec import MoESpec
from moeframe.routers import ROUTERS, Router

SOFTMAX = MoESpec(num_experts=8, top_k=2, intermediate_size=8, norm_topk_prob=True)
DEEPSEEK = MoESpec(num_experts=16, top_k=4, intermediate_size=8, scoring="sigmoid", norm_topk_prob=True,
                   n_group=4, topk_group=2, routed_scaling_factor=2.5, has_correction_bias=True)
CONF = Path(__file__).resolve().parents[2] / "conf" / "router"


def build(node: dict, moe: MoESpec = SOFTMAX) -> Router:
    return ROUTERS.build(node, moe=moe, layer_idx=0)


@pytest.mark.parametrize("name", ["top_k", "expert_choice", "balanced", "aux_free", "random", "hash"])
def test_k_larger_than_the_expert_count_is_refused(name):
    with pytest.raises(ConfigError, match=r"k=9 is larger than the model's 8 experts"):
        build({"name": name, "k": 9})


@pytest.mark.parametrize("name", ["top_k", "expert_choice", "balanced", "aux_free", "random", "hash"])
def test_k_below_one_is_refused(name):
    with pytest.raises(ConfigError, match="k >= 1"):
        build({"name": name, "k": 0})


@pytest.mark.parametrize("name", ["top_k", "expert_choice"])
@pytest.mark.parametrize("capacity_factor", [0.0, -1.0])
def test_capacity_factor_must_be_positive(name, capacity_factor):
    with pytest.raises(ConfigError, match="capacity_factor"):
        build({"name": name, "capacity_factor": capacity_factor})


def test_sigmoid_scores_do_not_apply_to_a_softmax_trained_gate():
    with pytest.raises(ConfigError, match="trained with softmax"):
        build({"name": "top_k", "score": "sigmoid"})
    assert build({"name": "top_k", "score": "sigmoid"}, DEEPSEEK).scoring == "sigmoid"


def test_unknown_score_and_method_list_the_valid_choices():
    with pytest.raises(ConfigError, match="softmax, sigmoid"):
        build({"name": "top_k", "score": "relu"})
    with pytest.raises(ConfigError, match="greedy, sinkhorn"):
        build({"name": "balanced", "method": "auction"})


def test_negative_slack_and_update_rate_are_refused():
    with pytest.raises(ConfigError, match="slack"):
        build({"name": "balanced", "slack": -0.1})
    with pytest.raises(ConfigError, match="update_rate"):
        build({"name": "aux_free", "update_rate": -1.0})


def test_an_option_of_another_router_is_refused():
    with pytest.raises(ConfigError, match="not an option of router 'native'"):
        build({"name": "native", "k": 2})


def test_group_limited_k_beyond_the_eligible_experts_is_refused():
    # topk_group=2 groups of 4 experts leave 8 eligible
    with pytest.raises(ConfigError, match="topk_group"):
        build({"name": "aux_free", "k": 9}, DEEPSEEK)


def test_a_checkpoint_whose_groups_cannot_be_scored_is_refused():
    bad = MoESpec(num_experts=4, top_k=1, intermediate_size=8, scoring="sigmoid", n_group=4, topk_group=2)
    with pytest.raises(ConfigError, match="two best experts"):
        build({"name": "native"}, bad)


@pytest.mark.parametrize("moe", [SOFTMAX, DEEPSEEK], ids=["softmax", "deepseek"])
@pytest.mark.parametrize("path", sorted(CONF.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_router_yaml_builds(path, moe):
    assert isinstance(build(OmegaConf.load(path), moe), Router)
