"""L2 hints for a batch-1 decode step: weight streams marked evict-first, the next layer's qkv weight prefetched.

A batch-1 step alternates weight streams (the projections, the experts) with
latency-bound kernels (norms, attention, the router) during which HBM idles:
on an H100 about 13 us a layer between the qkv projection and the experts.
``runner.l2_prefetch`` (an experiment, off by default) spends that time on the
next layer's qkv weight (25 MB at OLMoE's shape, half of the 50 MB L2): the o
projection's programs, resident during attention, issue PTX
``prefetch.global.L2::evict_last`` over it before their PDL wait, and every
weight stream of the GEMV kernels loads with an ``evict_first`` policy
(``createpolicy.fractional.L2::evict_first``, which Triton emits for
``eviction_policy="evict_first"``) so that the experts' 100 MB pass through L2
without pushing the prefetched lines out. The next qkv projection then reads
from L2. This is the hardware's L2 eviction-priority control (CUDA C++
Programming Guide, "L2 cache access management"; PTX ISA, ``prefetch`` and
``createpolicy``), driven per load instead of by an access-policy window.

``runner.gemv_tail_prefetch`` (also an experiment) is a narrower use of the
same instruction: a prefetching GEMV whose weight outgrows the registers of
one wave of its programs (OLMoE's 25 MB qkv weight against ~21 MB an H100's
register files hold at a 32 KB tile) has its first wave prefetch the rest,
with the normal priority, while it waits on the kernel before; the second
wave then reads L2 instead of starting a memory round trip after the wait.

Both lost on an H100 at OLMoE's batch 1 (920 tok/s without, 860 with
``l2_prefetch``, 904 with ``gemv_tail_prefetch``); not measured apart, the
likely cost is a prefetch stream keeping HBM busy while the latency-bound
kernels beside it wait on their own loads.

On the CPU and under Triton's interpreter (which cannot run inline PTX) the
switches change nothing; outputs never depend on them.
"""

from __future__ import annotations

import os

import torch

_enabled = False
_tail_enabled = False


def set_gemv_tail_prefetch(enabled: bool) -> None:
    """Let prefetching GEMVs pull the weight rows past their first wave into L2 (``runner.gemv_tail_prefetch``)."""
    global _tail_enabled
    _tail_enabled = enabled


def tail_prefetch(tensor: torch.Tensor) -> bool:
    """Whether a prefetching GEMV on ``tensor``'s device prefetches its second wave's rows: on, and compiled for CUDA."""
    return _tail_enabled and tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"


def set_l2_prefetch(enabled: bool) -> None:
    """Turn the hints on or off for later launches (``runner.l2_prefetch``); graphs keep what they captured."""
    global _enabled
    _enabled = enabled


def l2_hints(tensor: torch.Tensor) -> bool:
    """Whether launches on ``tensor``'s device take the hints: the switch is on and the kernels compile for CUDA."""
    return _enabled and tensor.is_cuda and os.environ.get("TRITON_INTERPRET") != "1"


def weight_eviction(tensor: torch.Tensor) -> str:
    """The ``eviction_policy`` of weight-stream loads on ``tensor``'s device: "evict_first" under the hints, else ""."""
    return "evict_first" if l2_hints(tensor) else ""
