"""Programmatic dependent launch (PDL) for the Triton kernels of a decode step.

A batch-1 decode step is a chain of ~200 short kernels, each waiting for the
one before it. On sm_90+ a kernel launched with PDL may start while its
predecessor drains: its programs are placed on the SMs and run until
``gdc_wait``, which blocks until the previous grid has finished and its writes
are visible (CUDA's griddepcontrol; TensorRT-LLM and SGLang launch their decode
kernels this way). On an H100 a 16-layer chain of GEMVs and one-program
kernels replayed from a CUDA graph took 1,077 us with PDL and 1,127 us without
(benchmarks/kernels_h100/pdl_experiment).

The contract a kernel signs to be launched this way: it takes a ``USE_PDL``
constexpr and calls ``pdl_wait(USE_PDL)`` (_pdl_jit.py) once, at the top
level, before its first store and before its first load of anything the
kernel just before it may write; the call also lets the next kernel launch.
Data the host uploaded before the step, weights, and what kernels two or more
launches back wrote may be loaded before the wait (each of those kernels has
finished once the previous kernel passed its own wait). A kernel that never waits must not be
launched with PDL: it could read stale inputs, and the kernels after it could
overtake the one before it. (Letting the successor launch before waiting, so
that its weight stream overlaps two kernels, measured slower for the norm
before the qkv projection on an H100: 908 against 920 tok/s at batch 1.)
``pdl_args`` gives both launch arguments, or
``USE_PDL=False`` alone where PDL is off (the CPU, the interpreter, GPUs older
than Hopper, ``runner.pdl=false``), in which case the wait compiles away.
"""

from __future__ import annotations

import functools
import os

import torch

_enabled = True


def set_pdl(enabled: bool) -> None:
    """Turn PDL on or off for later launches (``runner.pdl``); graphs keep what they captured."""
    global _enabled
    _enabled = enabled


def pdl_enabled() -> bool:
    """Whether ``runner.pdl`` asks for PDL (it still applies only where ``pdl_supported``)."""
    return _enabled


def pdl_supported(device: torch.device) -> bool:
    """Whether kernels on ``device`` can be launched with PDL: CUDA, compute capability 9.0+, compiled Triton."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return _hopper_or_newer(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _hopper_or_newer(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_args(tensor: torch.Tensor) -> dict[str, bool]:
    """Launch arguments of a PDL-aware kernel whose data live with ``tensor``."""
    if _enabled and pdl_supported(tensor.device):
        return {"USE_PDL": True, "launch_pdl": True}
    return {"USE_PDL": False}
