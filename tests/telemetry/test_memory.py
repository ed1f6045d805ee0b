"""Memory accounting: counted weight and KV bytes, and the meter's phases and peaks on hand-made allocations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from moeframe import Engine
from moeframe.cache.pool import KVPool
from moeframe.telemetry.memory import MemoryMeter, model_bytes, pool_bytes

MIB = 2**20


def test_tied_embeddings_are_counted_once() -> None:
    eng = Engine.from_overrides(["model=tiny-qwen2", "model.random_weights=true", "device=cpu", "dtype=float32", "cache=none"])
    model = eng.built.model
    assert model.lm_head.weight is model.embed_tokens.weight
    distinct = {id(p): p for p in model.parameters()}.values()
    assert model_bytes(model) == sum(p.numel() * 4 for p in distinct) + sum(b.numel() * b.element_size() for b in model.buffers())
    assert eng.stats()["memory"]["weights_bytes"] == model_bytes(model)


def test_pool_bytes_count_only_the_layers_held_here() -> None:
    pool = KVPool(4, 100, 2, 8, 6, torch.float32, "cpu", held_layers=[True, False, True, False])
    assert pool_bytes(pool) == 2 * 100 * 2 * (8 + 6) * 4


def hand_made_phases() -> dict:
    """The CPU meter's report over hand-made allocations, and whether it could reset the peak."""
    meter = MemoryMeter(torch.device("cpu"))
    meter.mark("start")
    weights = torch.ones(64 * MIB // 4)  # written, so resident
    meter.mark("weights")
    pool = torch.ones(32 * MIB // 4)
    meter.mark("kv_pool")
    transient = torch.ones(96 * MIB // 4)  # held during the build only
    del transient
    meter.mark("built")
    activations = torch.ones(48 * MIB // 4)
    del activations
    report = meter.report()
    del weights, pool
    return {**report, "peak_reset": meter.peak_reset}


def test_cpu_meter_sees_each_phase_and_the_run_peak_apart_from_the_build() -> None:
    # The resident set is the whole process's, so a fresh one: in a test worker, heap blocks
    # that earlier tests freed (and glibc kept resident) would hold the new tensors unseen.
    script = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_memory import hand_made_phases; print(json.dumps(hand_made_phases()))"
    )
    # One thread: Linux counts a thread's page faults into VmRSS in batches, so tensors that worker threads
    # filled can be missing from it when the next phase is marked (seen as a 0-byte weights phase).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["weights_bytes"] >= 60 * MIB and 28 * MIB <= report["kv_pool_bytes"] < 60 * MIB
    assert report["build_peak_bytes"] >= (64 + 32 + 90) * MIB
    if report["peak_reset"]:  # Linux lets a process reset its VmHWM
        assert 44 * MIB <= report["activation_peak_bytes"] < 90 * MIB
