"""How many programs of a compiled Triton kernel one GPU holds at once: its first wave.

A kernel that loads its weights before its PDL wait overlaps the kernel
before it with those loads only in the programs already resident; the rest
run as a second wave after the first ones exit. Where a weight is larger
than the register file of the whole GPU can hold (OLMoE's 25 MB qkv
projection against 132 SMs x 256 KB of registers on an H100), that tail is
known at launch, and small_gemv prefetches it into L2. The count follows the
CUDA occupancy calculator's rules for registers (allocated per warp in units
of 256), threads, blocks and shared memory per SM.
"""

from __future__ import annotations

import torch

# Hopper's per-SM limits, for properties an older torch does not report.
REGS_PER_SM = 65536
THREADS_PER_SM = 2048
BLOCKS_PER_SM = 32
SHARED_BYTES_PER_SM = 228 * 1024
# Registers are handed to a warp in units of 256, i.e. 8 per thread.
REGS_PER_THREAD_UNIT = 8
WARP_SIZE = 32


def programs_per_sm(n_regs: int, num_warps: int, shared_bytes: int, props: object | None = None) -> int:
    """Programs of ``num_warps`` warps, ``n_regs`` registers a thread and ``shared_bytes`` of shared memory one SM holds."""
    regs_per_sm = getattr(props, "regs_per_multiprocessor", REGS_PER_SM)
    threads_per_sm = getattr(props, "max_threads_per_multi_processor", THREADS_PER_SM)
    shared_per_sm = getattr(props, "shared_memory_per_multiprocessor", SHARED_BYTES_PER_SM)
    regs_per_warp = -(-max(n_regs, 1) // REGS_PER_THREAD_UNIT) * REGS_PER_THREAD_UNIT * WARP_SIZE
    by_regs = (regs_per_sm // regs_per_warp) // num_warps
    by_threads = threads_per_sm // (num_warps * WARP_SIZE)
    by_shared = shared_per_sm // shared_bytes if shared_bytes > 0 else BLOCKS_PER_SM
    return max(0, min(by_regs, by_threads, by_shared, BLOCKS_PER_SM))


def resident_programs(compiled: object, device: torch.device) -> int | None:
    """The first wave of a launched Triton kernel (``kernel[grid](...)``'s return) on ``device``; None off CUDA."""
    n_regs = getattr(compiled, "n_regs", None)
    metadata = getattr(compiled, "metadata", None)
    if device.type != "cuda" or not n_regs or metadata is None:
        return None
    props = torch.cuda.get_device_properties(device)
    per_sm = programs_per_sm(n_regs, metadata.num_warps, getattr(metadata, "shared", 0), props)
    return per_sm * props.multi_processor_count
