"""workload=router_fidelity: native against itself is exact; another router shows a measurable distance."""

from __future__ import annotations

import math

import torch

from moeframe import Engine
from moeframe.workloads import WORKLOADS
from moeframe.workloads.fidelity import fidelity


def fidelity_engine(path, router: str) -> Engine:
    return Engine.from_overrides(
        [f"model.path={path}", "device=cpu", "dtype=float32", f"router={router}", "workload=router_fidelity",
         "workload.progress=false", "workload.num_requests=2", "workload.max_new_tokens=4", "workload.max_chunks=2",
         "workload.chunk_tokens=48"]
    )  # fmt: skip


def run_fidelity(path, router: str) -> dict:
    engine = fidelity_engine(path, router)
    return WORKLOADS.build(engine.cfg.workload).run(engine)


def test_native_router_is_its_own_baseline_scoring_as_a_second_native_engine_does(checkpoint_factory) -> None:
    engine = fidelity_engine(checkpoint_factory("tiny-olmoe"), "native")
    ids = engine.encode("Mixture-of-experts models route each token to a few experts.")
    second = engine.variant({"router": {"name": "native"}})
    assert torch.equal(engine.score(ids), second.score(ids))
    second.close()
    metrics = WORKLOADS.build(engine.cfg.workload).run(engine)
    assert metrics["kl_vs_native"] == 0.0
    assert metrics["top1_agreement"] == 1.0
    assert math.isclose(metrics["perplexity"], metrics["perplexity_native"], rel_tol=1e-6)


def test_top1_router_moves_away_from_native(checkpoint_factory) -> None:
    metrics = run_fidelity(checkpoint_factory("tiny-olmoe"), "top1")
    assert metrics["kl_vs_native"] > 1e-3
    assert metrics["top1_agreement"] < 1.0
    assert metrics["fidelity_positions"] == 96


def test_fidelity_sums_match_hand_computation() -> None:
    native = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    router = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    targets = torch.tensor([0, 1])
    got = fidelity(router, native, targets)
    p = torch.softmax(native[1], -1)
    q = torch.softmax(router[1], -1)
    assert math.isclose(got["kl"], float((p * (p / q).log()).sum()), rel_tol=1e-6)
    assert got["agree"] == 1
    assert got["correct_router"] == 2 and got["correct_native"] == 1
    assert math.isclose(got["nll_native"], math.log(2) - math.log(torch.softmax(native[1], -1)[1].item()), rel_tol=1e-6)


def test_checkpoint_heldout_text_is_scored_when_present(checkpoint_factory, tmp_path) -> None:
    import shutil

    folder = tmp_path / "with-heldout"
    shutil.copytree(checkpoint_factory("tiny-olmoe"), folder)
    plain = run_fidelity(folder, "top1")
    (folder / "heldout.txt").write_text("class Stack:\n    def push(self, item):\n        self.items.append(item)\n" * 20)
    held = run_fidelity(folder, "top1")
    assert plain["fidelity_heldout"] is False and held["fidelity_heldout"] is True
    assert held["perplexity_native"] != plain["perplexity_native"]
    assert 0.0 <= held["next_token_accuracy"] <= 1.0 and 0.0 <= held["next_token_accuracy_native"] <= 1.0
