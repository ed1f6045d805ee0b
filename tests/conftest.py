"""Session-wide test fixtures: a private moeframe cache and tiny checkpoints made once."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

# Without a GPU, Triton kernels run in Triton's interpreter; Triton reads this
# once, when it is first imported, so it is set before anything imports it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# pytest-xdist workers share the cores (make test starts one per core): each
# takes its share of intra-op threads, as do the processes it starts, since
# threads beyond it would only preempt the other workers' threads.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    share = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(share)
    torch.set_num_threads(share)

from moeframe.model.presets import ensure_checkpoint  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def moeframe_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point $MOEFRAME_CACHE at a session temp folder, so no test writes into the home folder."""
    root = tmp_path_factory.mktemp("moeframe_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MOEFRAME_CACHE", str(root))
        yield root


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """preset name -> folder of its seed-0 checkpoint, made at most once per session."""
    root = tmp_path_factory.mktemp("checkpoints")
    return lambda preset: ensure_checkpoint(preset, cache_dir=root)
