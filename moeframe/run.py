"""``python -m moeframe.run [overrides]``: compose the config, build the engine, run a workload, log it.

Each run leaves in its Hydra run folder: the resolved config
(config.yaml, and Hydra's .hydra/), metrics.json, the logger's records and
an expert-load heatmap for MoE models.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from moeframe.api import Engine
from moeframe.config import CONF_DIR
from moeframe.errors import MoeframeError
from moeframe.telemetry.loggers import LOGGERS
from moeframe.workloads import WORKLOADS


def summary_table(metrics: dict[str, Any]) -> str:
    rows = [(k, f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in metrics.items() if not isinstance(v, (dict, list))]
    width = max(len(k) for k, _ in rows)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    return "\n".join(lines)


def run_study(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    engine = Engine(cfg)
    logger = LOGGERS.build(cfg.logger, run_dir=run_dir)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    logger.log_config(resolved)
    workload = WORKLOADS.build(cfg.workload)
    metrics = workload.run(engine)
    stats = engine.stats()
    metrics["peak_memory_bytes"] = stats.get("peak_memory_bytes", peak_rss_bytes())
    metrics["batch_dependent_routing"] = stats["batch_dependent_routing"]
    if "expert_load" in stats:
        total = stats["expert_load"]["total"]
        metrics.update({f"expert_load_{k}": v for k, v in total.items()})
        heatmap = run_dir / "expert_load.png"
        engine.built.recorder.heatmap_png(heatmap)
        logger.log_image("expert_load", heatmap)
    (run_dir / "metrics.json").write_text(json.dumps({"metrics": metrics, "stats": stats}, indent=2, default=str))
    logger.log_metrics(metrics)
    logger.close()
    engine.close()
    return metrics


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base=None)
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run_study(cfg, run_dir)
    except MoeframeError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    print(summary_table(metrics))
    print(f"run folder: {run_dir}")


if __name__ == "__main__":
    main()
