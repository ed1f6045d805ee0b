"""Run by tests/parallel/test_distributed.py under torchrun: every parallel check of one process group.

Spawning a group costs seconds, so one group runs them all and each rank
writes what it saw to ``rank{R}.json``; the tests then assert on the files.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from moeframe import Engine, SamplingParams
from moeframe.errors import ConfigError
from moeframe.parallel.distributed import init_distributed
from moeframe.parallel.load_file import write_expert_counts


def engine(path: str | None, *overrides: str) -> Engine:
    """``path`` None: the model comes from the overrides (a preset with random weights)."""
    source = [f"model.path={path}"] if path is not None else []
    return Engine.from_overrides([*source, "device=cpu", "dtype=float32", "cache=none", *overrides])


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
    }


def compare(ours: dict, ref: dict) -> dict:
    diff = torch.linalg.norm(ours["logits"] - ref["logits"]) / torch.linalg.norm(ref["logits"])
    return {
        "logits_rel_error": diff.item(),
        "batch_tokens": ours["batch_tokens"],
        "single_batch_tokens": ref["batch_tokens"],
        "alone_tokens": ours["alone_tokens"],
        "single_alone_tokens": ref["alone_tokens"],
        "parallel_stats": ours["stats"]["parallel"],
        "kept_assignments": ours["stats"].get("expert_load", {}).get("total", {}).get("kept"),
        "num_params": ours["num_params"],
        "single_num_params": ref["num_params"],
    }


def start_error(path: str, overrides: list[str]) -> str | None:
    try:
        engine(path, *overrides)
    except ConfigError as err:
        return str(err)
    return None


def main(args_file: str, out_dir: str) -> None:
    args = json.loads(Path(args_file).read_text())
    world = init_distributed(torch.device("cpu"))
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
    (Path(out_dir) / f"rank{world.rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
