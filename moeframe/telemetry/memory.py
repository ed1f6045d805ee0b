"""What an engine's memory holds: weights and KV pool counted, build phases and the run's peak measured.

Counted, exact on any device: the bytes of the model's distinct parameter and
buffer storages (a tied embedding once) and of the KV pool's tensors.
Measured: on CUDA, bytes the caching allocator has handed out
(``memory_allocated``, ``max_memory_allocated``: activations, CUDA-graph
pools and temporaries, not the allocator's idle reserve); on the CPU the
process's resident set (VmRSS, VmHWM in /proc/self/status), which also holds
the Python runtime and libraries, so CPU figures are taken relative to the
resident set before the build (code first loaded during the build, about
90 MiB, still lands in it). glibc keeps freed blocks under its mmap
threshold resident, so the resident set follows live tensors only with
``MALLOC_MMAP_THRESHOLD_=65536`` in the environment (big blocks are then
mapped and unmapped one by one). The builder marks each phase (start, weights
loaded, KV pool made, built), and at the end of the build resets the peak
(``reset_peak_memory_stats``; on Linux, writing 5 to /proc/self/clear_refs
resets VmHWM), so the run's peak is measured apart from the build's, where
a checkpoint tensor can be held twice while it is converted. On CUDA the
engine's warm-up (``Engine.warm_up``) resets it once more, so the run's
peak leaves the warm-up's forwards out.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from moeframe.cache.pool import KVPool

PHASES = ("start", "weights", "kv_pool", "built")


def model_bytes(model: nn.Module) -> int:
    """Bytes of the model's distinct parameter and buffer storages."""
    storages = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        storage = t.untyped_storage()
        storages[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def pool_bytes(pool: "KVPool") -> int:
    return sum(t.numel() * t.element_size() for t in itertools.chain(pool.k, pool.v))


def _proc_status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise OSError(f"/proc/self/status has no {field}")


class MemoryMeter:
    """In-use bytes at each build phase, the build's peak, and the run's peak since the build ended."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.source = "cuda_allocated" if device.type == "cuda" else "cpu_rss"
        self.marks: dict[str, int] = {}
        self.build_peak: int | None = None
        self.peak_reset = False

    def in_use(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device)
        return _proc_status_bytes("VmRSS")

    def peak(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device)
        return _proc_status_bytes("VmHWM")

    def mark(self, phase: str) -> None:
        if phase not in PHASES:
            raise ValueError(f"unknown memory phase {phase!r}; one of {PHASES}")
        self.marks[phase] = self.in_use()
        if phase == "built":
            self.build_peak = self.peak()
            self.peak_reset = self._reset_peak()

    def _reset_peak(self) -> bool:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            return False
        return True

    def report(self) -> dict[str, int | str | None]:
        """Measured bytes: each phase's growth, the build's and the run's peaks above the start, activations above the built engine.

        ``run_peak_bytes`` and ``activation_peak_bytes`` are None where the
        peak could not be reset (then only the whole process's peak is known).
        """
        marks = self.marks
        start, built = marks["start"], marks["built"]
        run_peak = self.peak() if self.peak_reset else None
        return {
            "source": self.source,
            "weights_bytes": marks["weights"] - start,
            "kv_pool_bytes": marks["kv_pool"] - marks["weights"],
            "rest_of_build_bytes": built - marks["kv_pool"],  # CUDA graphs and their pools, pruning, the runner
            "build_peak_bytes": self.build_peak - start,
            "run_peak_bytes": None if run_peak is None else max(run_peak, built) - start,
            "activation_peak_bytes": None if run_peak is None else max(run_peak - built, 0),
        }
