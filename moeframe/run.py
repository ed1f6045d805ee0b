"""``python -m moeframe.run [overrides]``: compose the config, build the engine, run a workload, log it.

Each run leaves in its Hydra run folder (the layout tools/compare.py reads):

    config.yaml       the resolved config; ``--config-dir RUN_DIR --config-name config`` reruns it
    provenance.json   git commit and dirty flag, package versions, device, seed, Hydra overrides and choices
    metrics.json      {"metrics": flat scalars, "stats": engine stats incl. per-layer expert load}
    outputs.jsonl     one line per request: prompt and generated token ids (greedy reruns match exactly)
    expert_load.png   layer x expert heatmap (MoE models)
    events.jsonl / wandb/   the logger's records (logger=jsonl | wandb)

``-m`` sweeps run each job in turn (Hydra's basic launcher) under a sweep
progress bar, one line per finished job, and a comparison table at the end.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from moeframe.api import Engine
from moeframe.config import CONF_DIR, check_groups, override_problem
from moeframe.errors import MoeframeError
from moeframe.parallel.distributed import launch_rank
from moeframe.telemetry import provenance
from moeframe.telemetry.loggers import LOGGERS, RunLogger
from moeframe.telemetry.summary import summary_table
from moeframe.workloads import WORKLOADS

IDENTITY_GROUPS = ("model", "router", "cache", "experts", "scheduler", "workload")


def hydra_info() -> dict[str, Any] | None:
    """The Hydra side of a run (overrides, group choices, sweep folder); None outside hydra.main."""
    if not HydraConfig.initialized():
        return None
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    return {
        "mode": "multirun" if multirun else "run",
        "overrides": list(hc.overrides.task),
        "override_dirname": hc.job.override_dirname,
        "choices": {k: v for k, v in hc.runtime.choices.items() if not k.startswith("hydra") and v is not None},
        "job_num": hc.job.num if multirun else None,
        "sweep_dir": hc.sweep.dir if multirun else None,
    }


def run_study(cfg: DictConfig, run_dir: Path, hydra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build, run the workload, write the run folder; returns the flat metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    check_groups(cfg, {"workload": WORKLOADS, "logger": LOGGERS})
    workload = WORKLOADS.build(cfg.workload)
    engine = Engine(cfg)
    multirun = hydra is not None and hydra["mode"] == "multirun"
    logger = LOGGERS.build(
        cfg.logger,
        run_dir=run_dir,
        run_name=(hydra or {}).get("override_dirname") or None,
        group=Path(hydra["sweep_dir"]).name if multirun else None,
    )
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
        record = provenance.collect(engine.built.device, int(cfg.seed), hydra)
        write(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True), logger)
        write(run_dir / "provenance.json", json.dumps(record, indent=2), logger)
        logger.log_config(resolved | {"provenance": record})
        metrics = workload.run(engine)
        stats = engine.stats()
        metrics.update(engine_metrics(stats))
        save_outputs(engine, run_dir / "outputs.jsonl", logger)
        if engine.built.recorder is not None:
            log_expert_load(engine, stats, run_dir, logger)
        write(run_dir / "metrics.json", json.dumps({"metrics": metrics, "stats": stats}, indent=2, default=str), logger)
        logger.log_metrics(metrics)
    finally:
        logger.close()
        engine.close()
    return metrics


def run_replica(cfg: DictConfig) -> None:
    """A torchrun rank other than 0: the same engine steps as rank 0 (collectives pair up), no files, no output."""
    workload = WORKLOADS.build(cfg.workload)
    engine = Engine(cfg)
    try:
        workload.run(engine)
    finally:
        engine.close()


def write(path: Path, text: str, logger: RunLogger) -> None:
    path.write_text(text)
    logger.log_file(path)


def engine_metrics(stats: dict[str, Any]) -> dict[str, Any]:
    metrics: dict[str, Any] = {
        "peak_memory_bytes": stats.get("peak_memory_bytes", peak_rss_bytes()),
        "batch_dependent_routing": stats["batch_dependent_routing"],
        "expert_weight_bytes": stats["expert_weight_bytes"],
        "experts_kernel": stats["experts_kernel"],
    }
    memory, measured = stats["memory"], stats["memory"]["measured"]
    metrics["weights_bytes"], metrics["kv_pool_bytes"] = memory["weights_bytes"], memory["kv_pool_bytes"]
    metrics["run_peak_bytes"], metrics["activation_peak_bytes"] = measured["run_peak_bytes"], measured["activation_peak_bytes"]
    if "expert_load" in stats:
        metrics.update({f"expert_load_{k}": v for k, v in stats["expert_load"]["total"].items()})
    parallel = stats["parallel"]
    metrics.update({f"parallel_{k}": parallel[k] for k in ("comm_time_share", "rank_load_imbalance", "stage_busy_share") if k in parallel})
    metrics.update({f"parallel_{kind}_bytes_per_step": v for kind, v in parallel.get("bytes_sent_per_step", {}).items()})
    return metrics


def save_outputs(engine: Engine, path: Path, logger: RunLogger) -> None:
    """Every request the workload sent, in arrival order, with its token ids (the reproducibility record)."""
    requests = sorted(engine.core.requests.values(), key=lambda r: r.rid)
    rows = []
    with path.open("w", encoding="utf-8") as out:
        for req in requests:
            line = {
                "request_id": req.rid,
                "prompt_ids": req.prompt_ids,
                "token_ids": req.output_ids,
                "finish_reason": req.finish_reason,
                "cached_tokens": req.cached_tokens or 0,
                "text": req.text,
            }
            if req.routed_experts is not None:
                line["routed_experts"] = req.routed_experts.tolist()
            out.write(json.dumps(line) + "\n")
            rows.append([req.rid, len(req.prompt_ids), len(req.output_ids), req.cached_tokens or 0, req.finish_reason, req.text])
    logger.log_file(path)
    logger.log_table("requests", ["request_id", "prompt_tokens", "generated_tokens", "cached_tokens", "finish_reason", "text"], rows)


def log_expert_load(engine: Engine, stats: dict[str, Any], run_dir: Path, logger: RunLogger) -> None:
    recorder = engine.built.recorder
    stats["expert_load"]["counts"] = recorder.load_counts().tolist()
    heatmap = recorder.heatmap_png(run_dir / "expert_load.png")
    logger.log_image("expert_load", heatmap)
    logger.log_file(heatmap)
    layers = stats["expert_load"]["layers"]
    if layers:
        columns = list(layers[0])
        logger.log_table("expert_load_layers", columns, [[row[c] for c in columns] for row in layers])


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def title_of(cfg: DictConfig, hydra: dict[str, Any] | None) -> str:
    choices = (hydra or {}).get("choices", {})
    parts = []
    for group in IDENTITY_GROUPS:
        choice = choices.get(group) or OmegaConf.select(cfg, f"{group}.name") or OmegaConf.select(cfg, f"{group}.preset")
        if choice is not None:
            parts.append(f"{group}={choice}")
    return "moeframe run: " + " ".join(parts)


def job_line(metrics: dict[str, Any], hydra: dict[str, Any], run_dir: Path) -> str:
    load = metrics.get("expert_load_max_mean_load")
    load_part = f", max/mean load {load:.2f}" if load is not None else ""
    return (
        f"[job {hydra['job_num']}] "
        f"{metrics.get('throughput_tok_s', 0.0):.1f} tok/s, ttft p50 {metrics.get('ttft_ms_p50', 0.0):.0f} ms, "
        f"hit rate {metrics.get('cache_hit_rate', 0.0):.2f}{load_part} -> {run_dir}"
    )


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    info = hydra_info()
    try:
        if launch_rank() != 0:
            run_replica(cfg)
            return
        metrics = run_study(cfg, run_dir, info)
    except MoeframeError as err:
        if launch_rank() == 0:
            print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if info is not None and info["mode"] == "multirun":
        tqdm.write(job_line(metrics, info, run_dir))
        return
    print(summary_table(metrics, title_of(cfg, info)))
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    if (problem := override_problem(sys.argv[1:])) is not None:
        print(f"error: {problem}", file=sys.stderr)
        sys.exit(2)
    main()
