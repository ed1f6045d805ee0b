"""GPU benchmarks of the kernels at the OLMoE-1B-7B shape (pytest-benchmark); skipped without CUDA."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import pytest
import torch

# Not collected without a GPU (or without pytest-benchmark): there is nothing to time.
if not torch.cuda.is_available() or importlib.util.find_spec("pytest_benchmark") is None:
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture
def replay_graph() -> Callable[[Callable[[], object]], Callable[[], None]]:
    """fn -> a callable that replays fn's CUDA graph and waits for it (launch overhead excluded, as in decode)."""

    def capture(fn: Callable[[], object]) -> Callable[[], None]:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()

        def replay() -> None:
            graph.replay()
            torch.cuda.synchronize()

        return replay

    return capture
