"""Elementwise regions compiled into single kernels on CUDA (torch.compile / Inductor).

A decode step of a small batch is a few large GEMVs and hundreds of tiny
elementwise kernels (casts, norms, rotary halves, residual adds), each a
launch of a microsecond or two. Compiling those regions fuses each into one
Triton kernel, as gpt-fast does for its whole decoder; the compiled kernels
are ordinary launches, so CUDA graphs capture them. On the CPU the plain
torch code runs (the reference, and the path CI tests), so both paths are the
same function. Where ``runner.pdl`` is on and Inductor knows the option, its
kernels are generated for programmatic dependent launch too (moeframe/gpu/pdl.py),
so they do not break the chain of the decode step's Triton kernels.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch

from moeframe.gpu.pdl import pdl_enabled

F = TypeVar("F", bound=Callable)

_enabled = True


def set_compile(enabled: bool) -> None:
    """Turn fusion on or off for CUDA tensors (``runner.compile``); CPU tensors always run eagerly."""
    global _enabled
    _enabled = enabled


def _inductor_options() -> dict[str, bool]:
    if pdl_enabled() and hasattr(torch._inductor.config.triton, "enable_pdl"):
        return {"triton.enable_pdl": True}
    return {}


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
                compiled = torch.compile(fn, dynamic=True, options=_inductor_options())
            return compiled(*args, **kwargs)
        return fn(*args, **kwargs)

    return call  # type: ignore[return-value]
