"""Scheduling order changes when requests run, never what they generate: every policy agrees with fcfs token for token.

The order each policy promises is tested on hand-made queues in test_policy_order.py.
"""

from __future__ import annotations

import pytest
from engine_runs import TIGHT_POOL, run_workload


@pytest.mark.parametrize("workload", ["few_shot", "multi_turn"])
def test_every_policy_generates_what_fcfs_does(make_engine, workload):
    outputs = {}
    for policy in ("fcfs", "lpm", "dfs_weight", "priority"):
        engine = make_engine("cache=radix", f"scheduler={policy}", *TIGHT_POOL)
        run = run_workload(engine, workload)
        assert all(r.finish_reason == "length" for r in run.requests)
        outputs[policy] = {sub.tag: req.output_ids for sub, req in zip(run.submissions, run.requests)}
    assert outputs["fcfs"] == outputs["lpm"] == outputs["dfs_weight"] == outputs["priority"]
