"""Where a run's numbers came from: code version, package versions, device, seed, the Hydra command.

Written to each run folder as provenance.json next to the resolved
config.yaml, so a table in experiments/ can always be traced to a commit and
regenerated (the habit of MLflow's and W&B's run metadata, kept as one plain
file that needs neither service).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("moeframe", "torch", "triton", "transformers", "hydra-core", "wandb")


def git_state(repo: Path = REPO_ROOT) -> dict[str, Any] | None:
    """The checked-out commit and whether tracked or untracked files differ from it (None outside git)."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, check=True, timeout=10
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": bool(status.strip())}


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_model()} ({torch.get_num_threads()} threads)"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def collect(device: torch.device, seed: int, hydra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything but the config itself (that goes to config.yaml beside it)."""
    return {
        "git": git_state(),
        "versions": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device_name(device),
        "seed": seed,
        "argv": list(sys.argv),
        "hydra": hydra,
    }
