"""Elementwise regions compiled into single kernels on CUDA (torch.compile / Inductor).

A decode step of a small batch is a few large GEMVs and hundreds of tiny
elementwise kernels (casts, norms, rotary halves, residual adds), each a
launch of a microsecond or two. Compiling those regions fuses each into one
Triton kernel, as gpt-fast does for its whole decoder; the compiled kernels
are ordinary launches, so CUDA graphs capture them. On the CPU the plain
torch code runs (the reference, and the path CI tests), so both paths are the
same function.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

F = TypeVar("F", bound=Callable)

_enabled = True


def set_compile(enabled: bool) -> None:
    """Turn fusion on or off for CUDA tensors (``runner.compile``); CPU tensors always run eagerly."""
    global _enabled
    _enabled = enabled


def fused_on_cuda(fn: F) -> F:
    compiled: Callable | None = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal compiled
        if _enabled and args[0].is_cuda:
            if compiled is None:
                # One compiled variant per (rank, dtype, eps, ...) a process meets: several
                # models in one process (tests, sweeps) need more than dynamo's default of 8;
                # past the limit dynamo runs the function eagerly, which is still correct.
                torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
                compiled = torch.compile(fn, dynamic=True)
            return compiled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
