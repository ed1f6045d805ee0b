"""The workloads send what they promise: shared prefixes where they should, none where they should not."""

from __future__ import annotations

import pytest

from moeframe.workloads import WORKLOADS
from moeframe.errors import ConfigError
from moeframe.workloads.driver import client_metrics
from moeframe.workloads.multi_turn import Turn
from moeframe.workloads.tree import TreeParams


def prompt_of(run, tag) -> list[int]:
    return next(sub.prompt_ids for sub in run.submissions if sub.tag == tag)


def request_of(run, tag):
    return next(req for sub, req in zip(run.submissions, run.requests) if sub.tag == tag)


def test_few_shot_questions_share_the_prefix_and_differ_after_it(reference):
    run = reference.workloads["few_shot"].run
    prompts = [sub.prompt_ids for sub in run.submissions]
    assert all(p[:32] == prompts[0][:32] for p in prompts)
    assert len({tuple(p[32:]) for p in prompts}) == len(prompts)


def test_multi_turn_prompt_extends_previous_turn_and_answer(reference):
    run = reference.workloads["multi_turn"].run
    assert len(run.requests) == 3 * 3
    for conversation in range(3):
        for index in (1, 2):
            before = request_of(run, Turn(conversation, index - 1))
            history = before.prompt_ids + before.output_ids
            now = prompt_of(run, Turn(conversation, index))
            assert now[: len(history)] == history and len(now) == len(history) + 6


def test_multi_turn_sends_a_turn_only_after_the_previous_finished(reference):
    run = reference.workloads["multi_turn"].run
    for sub, req in zip(run.submissions, run.requests):
        turn: Turn = sub.tag
        if turn.index > 0:
            assert request_of(run, Turn(turn.conversation, turn.index - 1)).finished_s <= req.arrival_s


def test_tree_children_extend_their_parent_differently(reference):
    run = reference.workloads["tree"].run
    assert len(run.requests) == TreeParams(depth=2, branching=2).num_nodes == 7
    for parent in range(3):
        before = request_of(run, parent)
        history = before.prompt_ids + before.output_ids
        children = [prompt_of(run, child) for child in (2 * parent + 1, 2 * parent + 2)]
        assert all(c[: len(history)] == history for c in children)
        assert children[0][len(history) :] != children[1][len(history) :]


def test_random_prompts_share_no_prefix_so_radix_hits_nothing(make_engine):
    engine = make_engine("cache=radix", "cache.max_tokens=1024")
    metrics = WORKLOADS.build({"name": "random", "num_requests": 6, "min_prompt_tokens": 4, "max_prompt_tokens": 12, "max_new_tokens": 2, "progress": False}).run(engine)
    assert metrics["cache_hit_rate"] == 0.0 and metrics["requests"] == 6


def test_metrics_report_latency_hit_rate_and_cache_figures(reference):
    metrics = client_metrics(reference.engine, reference.workloads["tree"].run)
    for key in ("throughput_tok_s", "ttft_ms_mean", "itl_ms_mean", "cache_hit_rate", "evicted_tokens", "preemptions", "pool_peak_usage"):
        assert key in metrics
    assert metrics["generated_tokens"] == 7 * 4


@pytest.mark.parametrize(
    "node",
    [
        {"name": "few_shot", "prefix_tokens": 0},
        {"name": "multi_turn", "num_turns": 0},
        {"name": "tree", "depth": 12, "branching": 4},
        {"name": "random", "min_prompt_tokens": 20, "max_prompt_tokens": 10},
        {"name": "random", "max_concurrency": -1},
    ],
)
def test_bad_workload_params_fail_at_start(node):
    with pytest.raises(ConfigError):
        WORKLOADS.parse_params(node)
