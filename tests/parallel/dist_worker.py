"""Run by tests/parallel/test_distributed.py under torchrun: every parallel check of one process group.

Spawning a group costs seconds, so one group runs them all and each rank
writes what it saw to ``rank{R}.json``; the tests then assert on the files.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from moeframe import Engine, SamplingParams
from moeframe.errors import ConfigError
from moeframe.parallel.distributed import init_distributed
from moeframe.parallel.load_file import write_expert_counts


DEVICE = "cpu"  # main() sets it from the args: "cuda" runs each rank on its LOCAL_RANK GPU over NCCL


def engine(path: str | None, *overrides: str) -> Engine:
    """``path`` None: the model comes from the overrides (a preset with random weights)."""
    source = [f"model.path={path}"] if path is not None else []
    return Engine.from_overrides([*source, f"device={DEVICE}", "dtype=float32", "cache=none", *overrides])


def prompts(vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(1, min(vocab, 2000), (n,), generator=g).tolist() for n in (17, 4, 9)]


def run_checks(eng: Engine) -> dict:
    """Logits of a teacher-forced pass, greedy tokens of a batch and of one prompt alone (1 token per decode step)."""
    batch = prompts(eng.spec.vocab_size)
    params = SamplingParams(max_new_tokens=8, ignore_eos=True)
    return {
        "logits": eng.score(batch[0]),
        "batch_tokens": [o.token_ids for o in eng.generate(batch, params)],
        "alone_tokens": eng.generate([batch[1]], params)[0].token_ids,
        "stats": eng.stats(),
        "num_params": sum(p.numel() for p in eng.built.model.parameters()),
        "kv_layers": [k.shape[0] > 0 for k in eng.built.pool.k],
    }


def kept_assignments(stats: dict) -> int | None:
    """Every forward's kept assignments: served ones and those counted apart (the scoring pass), as the rank load counts."""
    load = stats.get("expert_load")
    if load is None:
        return None
    return load["total"]["kept"] + sum(phase["kept"] for phase in load["counted_apart"].values())


def compare(ours: dict, ref: dict) -> dict:
    diff = torch.linalg.norm(ours["logits"] - ref["logits"]) / torch.linalg.norm(ref["logits"])
    return {
        "logits_rel_error": diff.item(),
        "batch_tokens": ours["batch_tokens"],
        "single_batch_tokens": ref["batch_tokens"],
        "alone_tokens": ours["alone_tokens"],
        "single_alone_tokens": ref["alone_tokens"],
        "parallel_stats": ours["stats"]["parallel"],
        "kept_assignments": kept_assignments(ours["stats"]),
        "num_params": ours["num_params"],
        "single_num_params": ref["num_params"],
        "kv_layers": ours["kv_layers"],
    }


class OverlapGate:
    """Holds stage 1 at the start of micro-batch 0 until stage 0 has started micro-batch 1 (a marker file), for 30 s at most.

    Stage 0 can get there only if it does not wait for stage 1 between its
    micro-batches: if the stages did not overlap, the marker would never come.
    """

    def __init__(self, marker: Path) -> None:
        self.marker, self.events, self.saw_marker = marker, [], None

    def __call__(self, stage: int, micro_batch: int, event: str) -> None:
        self.events.append((stage, micro_batch, event))
        if (stage, micro_batch, event) == (0, 1, "start"):
            self.marker.touch()
        if (stage, micro_batch, event) == (1, 0, "start") and self.saw_marker is None:
            deadline = time.monotonic() + 30
            while not self.marker.exists() and time.monotonic() < deadline:
                time.sleep(0.005)
            self.saw_marker = self.marker.exists()


def pipeline_overlap(path: str, out_dir: str) -> dict:
    """One prefill step of 4 prompts in 2 micro-batches through 2 stages, under the gate."""
    eng = engine(path, "parallel=pipeline", "parallel.micro_batches=2")
    gate = OverlapGate(Path(out_dir) / "stage0_started_micro_batch_1")
    eng.built.parallel.observer = gate
    eng.generate(prompts(eng.spec.vocab_size) + [[7, 8, 9]], SamplingParams(max_new_tokens=1, ignore_eos=True))
    return {"saw_marker": gate.saw_marker, "events": gate.events}


def batch_routes(path: str, *overrides: str) -> list:
    """The routes each rank returns for the check batch (runner.routes=true)."""
    eng = engine(path, "runner.routes=true", *overrides)
    params = SamplingParams(max_new_tokens=6, ignore_eos=True, return_routed_experts=True)
    return [o.routed_experts.tolist() for o in eng.generate(prompts(eng.spec.vocab_size), params)]


def start_error(path: str, overrides: list[str]) -> str | None:
    try:
        engine(path, *overrides)
    except ConfigError as err:
        return str(err)
    return None


def main(args_file: str, out_dir: str) -> None:
    args = json.loads(Path(args_file).read_text())
    global DEVICE
    DEVICE = args.get("device", "cpu")
    world = init_distributed(torch.device(DEVICE))
    bad = args.get("bad", {})
    results: dict = {"errors": {name: start_error(path, overrides) for name, (path, overrides) in bad.items()}}
    for name, path in args["models"].items():
        base = args.get("base", {}).get(name, [])
        single = run_checks(engine(path, *base, "parallel=single"))
        for label, overrides in args["runs"][name].items():
            results[f"{name}/{label}"] = compare(run_checks(engine(path, *base, *overrides)), single)
        if name == args.get("redundant_model"):
            counts = torch.tensor(single["stats"]["expert_load"]["counts"])
            load_file = write_expert_counts(counts, Path(out_dir) / f"counts_rank{world.rank}.json")
            overrides = ("parallel=expert", "parallel.redundant_experts=3", f"parallel.load_file={load_file}")
            results[f"{name}/expert_redundant"] = compare(run_checks(engine(path, *overrides)), single)
    for name in args.get("routes_models", []):
        single = batch_routes(args["models"][name], "parallel=single")
        for label in ("tensor", "expert"):
            results[f"routes/{name}/{label}"] = {"routes": batch_routes(args["models"][name], f"parallel={label}"), "single": single}
    if "overlap_model" in args:
        results["pipeline_overlap"] = pipeline_overlap(args["models"][args["overlap_model"]], out_dir)
    (Path(out_dir) / f"rank{world.rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
