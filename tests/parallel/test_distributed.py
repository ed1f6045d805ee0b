"""Tensor, expert and pipeline parallel against single, on 2 (and 4) CPU processes with gloo, launched by torchrun.

One torchrun group runs every check (tests/parallel/dist_worker.py); each
test below asserts one behaviour on what the ranks wrote.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ports import free_port

from moeframe.model.checkpoint_maker import make_checkpoint
from moeframe.model.presets import make_config

WORLD_SIZE = 2
FAMILIES = {"mixtral": "tiny-mixtral", "qwen2-moe": "tiny-qwen2-moe", "olmoe": "tiny-olmoe", "deepseek-v3": "tiny-deepseek-v3"}
STRATEGIES = {"tensor": ["parallel=tensor"], "expert": ["parallel=expert"]}
# expert parallel with tensor parallel inside: on 2 ranks a [1, 2] grid, on 4 ranks a [2, 2] grid
EXPERT_TP2 = ["parallel=expert", "parallel.tp_size=2"]
PARITY = [(family, strategy) for family in FAMILIES for strategy in STRATEGIES] + [
    ("qwen2-moe-e5", "expert"),
    ("olmoe", "expert_tp2"),
    ("mixtral-expert-choice", "expert"),
    ("olmoe-random-weights", "tensor"),
    ("olmoe-random-weights", "expert"),
    ("olmoe", "pipeline"),
    ("deepseek-v3", "pipeline"),
    ("deepseek-v3", "pipeline_split"),
    ("qwen2-tied", "pipeline"),
]
PIPELINE = {
    "pipeline": ["parallel=pipeline"],
    # a given split, and more micro-batches than stages (3 prompts: one request each)
    "pipeline_split": ["parallel=pipeline", "parallel.split=[2,1]", "parallel.micro_batches=4"],
}
PIPELINE_PARITY = [(family, strategy) for family, strategy in PARITY if strategy.startswith("pipeline")]
GRID_FAMILIES = ("mixtral", "deepseek-v3")
ROUTES_FAMILIES = ["olmoe", "deepseek-v3"]


def launch(world_size: int, args: dict, root: Path) -> list[dict]:
    """torchrun the worker on ``world_size`` CPU processes; each rank's results."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "args.json").write_text(json.dumps(args))
    worker = Path(__file__).with_name("dist_worker.py")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={world_size}", "--nnodes=1",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}", str(worker), str(root / "args.json"), str(root),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((root / f"rank{r}.json").read_text()) for r in range(world_size)]


@pytest.fixture(scope="module")
def ranks(checkpoint_factory, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    root = tmp_path_factory.mktemp("parallel")
    models = {family: str(checkpoint_factory(preset)) for family, preset in FAMILIES.items()}
    # a batch-dependent router with dropped assignments: every rank must route the whole batch alike
    models["mixtral-expert-choice"] = models["mixtral"]
    # weights drawn on each rank (no checkpoint): every rank draws the full tensors alike and keeps its cut
    models["olmoe-random-weights"] = None
    # 5 experts over 2 ranks: uneven blocks of 3 and 2
    models["qwen2-moe-e5"] = str(make_checkpoint(make_config("qwen2_moe", num_experts=5, num_experts_per_tok=2), root / "e5", seed=1))
    # a dense model whose LM head is its embedding: the first and last stages each keep the one tensor
    models["qwen2-tied"] = str(checkpoint_factory("tiny-qwen2"))
    bad = {
        "tensor_heads_3": (make_checkpoint(make_config("qwen3_moe", num_attention_heads=3, num_key_value_heads=1), root / "h3", seed=1), ["parallel=tensor"]),
        "expert_one_expert": (make_checkpoint(make_config("mixtral", num_local_experts=1, num_experts_per_tok=1), root / "e1", seed=1), ["parallel=expert"]),
        "expert_tp_size_3": (models["mixtral"], ["parallel=expert", "parallel.tp_size=3"]),
        "pipeline_one_layer": (make_checkpoint(make_config("mixtral", num_hidden_layers=1), root / "l1", seed=1), ["parallel=pipeline"]),
        "pipeline_split_3": (models["mixtral"], ["parallel=pipeline", "parallel.split=[1,1,0]"]),
        "pipeline_expert_choice": (models["mixtral"], ["parallel=pipeline", "router=expert_choice"]),
        "pipeline_routes": (models["mixtral"], ["parallel=pipeline", "runner.routes=true"]),
    }
    runs = STRATEGIES | PIPELINE | {"expert_tp2": EXPERT_TP2}
    args = {
        "models": models,
        "runs": {family: {s: runs[s] for f, s in PARITY if f == family} for family in models},
        "bad": {name: (str(path), overrides) for name, (path, overrides) in bad.items()},
        "redundant_model": "olmoe",
        "overlap_model": "olmoe",
        "routes_models": ROUTES_FAMILIES,
        "base": {
            "mixtral-expert-choice": ["router=expert_choice"],
            "olmoe-random-weights": ["model=tiny-olmoe", "model.random_weights=true"],
        },
    }
    return launch(WORLD_SIZE, args, root / "world2")


@pytest.fixture(scope="module")
def grid_ranks(checkpoint_factory, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """4 ranks: 2 expert-parallel groups of 2 tensor-parallel ranks; 4 pipeline stages; 2 stages of 2 expert-parallel ranks."""
    root = tmp_path_factory.mktemp("grid")
    models = {family: str(checkpoint_factory(FAMILIES[family])) for family in GRID_FAMILIES}
    runs = {family: {"expert_tp2": EXPERT_TP2} for family in models}
    models["mixtral-4-layers"] = str(make_checkpoint(make_config("mixtral", num_hidden_layers=4), root / "l4", seed=1))
    runs["mixtral-4-layers"] = {"pipeline": ["parallel=pipeline"]}
    runs["mixtral"]["pipeline_ep2"] = ["parallel=pipeline", "parallel.ep_size=2"]
    return launch(4, {"models": models, "runs": runs}, root)


@pytest.mark.parametrize("family,strategy", PARITY)
def test_parallel_logits_match_single(ranks: list[dict], family: str, strategy: str) -> None:
    for result in ranks:
        assert result[f"{family}/{strategy}"]["logits_rel_error"] < 1e-5


@pytest.mark.parametrize("family,strategy", PARITY)
def test_parallel_greedy_tokens_match_single(ranks: list[dict], family: str, strategy: str) -> None:
    for result in ranks:
        check = result[f"{family}/{strategy}"]
        assert check["batch_tokens"] == check["single_batch_tokens"]
        assert check["alone_tokens"] == check["single_alone_tokens"]


def test_tensor_with_heads_not_divisible_fails_at_start_on_every_rank(ranks: list[dict]) -> None:
    for result in ranks:
        message = result["errors"]["tensor_heads_3"]
        assert message is not None and "heads (3)" in message and "world size (2)" in message


def test_expert_with_more_ranks_than_experts_fails_at_start_on_every_rank(ranks: list[dict]) -> None:
    for result in ranks:
        message = result["errors"]["expert_one_expert"]
        assert message is not None and "2 expert-parallel ranks but only 1 experts" in message


def test_expert_with_tp_size_not_dividing_the_world_fails_at_start_on_every_rank(ranks: list[dict]) -> None:
    for result in ranks:
        message = result["errors"]["expert_tp_size_3"]
        assert message is not None and "tp_size=3 does not divide the world size (2)" in message


def test_redundant_experts_keep_outputs_equal_to_single(ranks: list[dict]) -> None:
    for result in ranks:
        check = result["olmoe/expert_redundant"]
        assert check["logits_rel_error"] < 1e-5
        assert check["batch_tokens"] == check["single_batch_tokens"]


def test_redundant_placement_report_adds_replicas_without_raising_predicted_imbalance(ranks: list[dict]) -> None:
    report = ranks[0]["olmoe/expert_redundant"]["parallel_stats"]["placement"]
    for layer in report:
        held = [e for experts in layer["rank_experts"] for e in experts]
        assert sorted(set(held)) == list(range(16)) and 16 < len(held) <= 16 + 3
        assert layer["imbalance_after"] <= layer["imbalance_before"]
        assert sum(layer["predicted_load_after"]) == pytest.approx(sum(layer["predicted_load_before"]))


def test_expert_parallel_rank_load_counts_every_kept_assignment(ranks: list[dict]) -> None:
    for family in FAMILIES:
        check = ranks[0][f"{family}/expert"]
        assert sum(check["parallel_stats"]["rank_load"]) == check["kept_assignments"]


def test_expert_parallel_reports_all_to_all_bytes_and_comm_share(ranks: list[dict]) -> None:
    stats = ranks[0]["mixtral/expert"]["parallel_stats"]
    assert stats["bytes_sent_per_step"]["dispatch"] > 0 and stats["bytes_sent_per_step"]["combine"] > 0
    assert 0 < stats["comm_time_share"] < 1


def test_tensor_parallel_reports_all_reduce_bytes(ranks: list[dict]) -> None:
    stats = ranks[0]["mixtral/tensor"]["parallel_stats"]
    assert stats["world_size"] == 2 and stats["bytes_sent_per_step"]["all_reduce"] > 0


@pytest.mark.parametrize("strategy", ["tensor", "expert"])
@pytest.mark.parametrize("family", ROUTES_FAMILIES)
def test_parallel_routes_on_every_rank_match_single(ranks: list[dict], family: str, strategy: str) -> None:
    """Routers run replicated over whole steps: rank 0 (and every rank) returns single's routes, nothing to gather."""
    for rank in ranks:
        result = rank[f"routes/{family}/{strategy}"]
        assert result["routes"] == result["single"]


def test_ranks_generate_the_same_tokens(ranks: list[dict]) -> None:
    for family, strategy in PARITY:
        assert ranks[0][f"{family}/{strategy}"]["batch_tokens"] == ranks[1][f"{family}/{strategy}"]["batch_tokens"]


@pytest.mark.parametrize("family", GRID_FAMILIES)
def test_expert_with_tensor_inside_on_a_2x2_grid_matches_single(grid_ranks: list[dict], family: str) -> None:
    for result in grid_ranks:
        check = result[f"{family}/expert_tp2"]
        assert check["logits_rel_error"] < 1e-5
        assert check["batch_tokens"] == check["single_batch_tokens"]
        assert check["alone_tokens"] == check["single_alone_tokens"]
        assert (check["parallel_stats"]["tp_size"], check["parallel_stats"]["ep_size"]) == (2, 2)


@pytest.mark.parametrize("strategy", ["tensor", "expert"])
def test_each_rank_holds_only_its_shard_of_the_weights(ranks: list[dict], strategy: str) -> None:
    for result in ranks:
        check = result[f"deepseek-v3/{strategy}"]
        assert check["num_params"] < check["single_num_params"]


@pytest.mark.parametrize("family,strategy", PIPELINE_PARITY)
def test_pipeline_stages_keep_only_their_layers_weights_and_kv(ranks: list[dict], family: str, strategy: str) -> None:
    held = []
    for result in ranks:
        check = result[f"{family}/{strategy}"]
        lo, hi = check["parallel_stats"]["stage_layers"][check["parallel_stats"]["stage"]]
        assert check["kv_layers"] == [lo <= i < hi for i in range(len(check["kv_layers"]))]
        assert check["num_params"] < check["single_num_params"]
        held.append(check["kv_layers"])
    assert [any(layer) for layer in zip(*held)] == [True] * len(held[0])  # every layer on some stage


def test_pipeline_split_follows_the_config(ranks: list[dict]) -> None:
    assert ranks[0]["deepseek-v3/pipeline_split"]["parallel_stats"]["stage_layers"] == [[0, 2], [2, 3]]


def test_pipeline_first_stage_sends_and_last_stage_broadcasts_logits(ranks: list[dict]) -> None:
    first, last = (ranks[r]["olmoe/pipeline"]["parallel_stats"] for r in (0, 1))
    assert first["bytes_sent"]["p2p"] > 0 and "p2p" not in last["bytes_sent"]
    assert last["bytes_sent"]["broadcast"] > 0 and "broadcast" not in first["bytes_sent"]
    assert first["micro_batches_per_step"] > 1


def test_pipeline_stage_starts_the_next_micro_batch_while_the_next_stage_runs_the_last(ranks: list[dict]) -> None:
    """Stage 1, holding micro-batch 0, saw stage 0 start micro-batch 1 (see dist_worker.OverlapGate)."""
    assert ranks[1]["pipeline_overlap"]["saw_marker"] is True
    for stage, result in enumerate(ranks):
        order = [(m, event) for s, m, event in result["pipeline_overlap"]["events"]]
        assert all(s == stage for s, _, _ in result["pipeline_overlap"]["events"])
        assert order == [(0, "start"), (0, "done"), (1, "start"), (1, "done")]


def test_pipeline_refusals_name_the_problem_on_every_rank(ranks: list[dict]) -> None:
    for result in ranks:
        errors = result["errors"]
        assert "2 stages but the model has 1 layers" in errors["pipeline_one_layer"]
        assert "parallel.split=[1, 1, 0]" in errors["pipeline_split_3"]
        assert "batch-dependent router" in errors["pipeline_expert_choice"]
        assert "set runner.routes=false" in errors["pipeline_routes"]


@pytest.mark.parametrize("family,strategy,stages", [("mixtral-4-layers", "pipeline", 4), ("mixtral", "pipeline_ep2", 2)])
def test_pipeline_on_4_ranks_matches_single(grid_ranks: list[dict], family: str, strategy: str, stages: int) -> None:
    for result in grid_ranks:
        check = result[f"{family}/{strategy}"]
        assert check["logits_rel_error"] < 1e-5
        assert check["batch_tokens"] == check["single_batch_tokens"]
        assert check["alone_tokens"] == check["single_alone_tokens"]
        stats = check["parallel_stats"]
        assert (stats["num_stages"], stats["ep_size"]) == (stages, 4 // stages)


@pytest.fixture(scope="module")
def gpu_ranks(checkpoint_factory, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """2 GPUs over NCCL: 2 pipeline stages against single on each rank's GPU."""
    models = {"olmoe": str(checkpoint_factory("tiny-olmoe")), "deepseek-v3": str(checkpoint_factory("tiny-deepseek-v3"))}
    runs = {family: {"pipeline": ["parallel=pipeline"]} for family in models}
    return launch(2, {"models": models, "runs": runs, "device": "cuda"}, tmp_path_factory.mktemp("gpu"))


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("family", ["olmoe", "deepseek-v3"])
def test_pipeline_on_2_gpus_matches_single(gpu_ranks: list[dict], family: str) -> None:
    for result in gpu_ranks:
        check = result[f"{family}/pipeline"]
        assert check["logits_rel_error"] < 1e-4  # micro-batches change GEMM shapes, so cuBLAS may sum in another order
        assert check["batch_tokens"] == check["single_batch_tokens"]
        assert check["alone_tokens"] == check["single_alone_tokens"]
