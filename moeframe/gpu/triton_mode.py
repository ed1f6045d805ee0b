"""Whether Triton kernels can run on a device: compiled on CUDA, or anywhere under Triton's interpreter.

A choice that needs them (``experts=triton``, ``runner.attention=triton``)
is refused at start with this reason instead of failing at the first launch
with Triton's "0 active drivers".
"""

from __future__ import annotations

import os

import torch


def triton_interpreted() -> bool:
    """Whether Triton will interpret kernels on the CPU (TRITON_INTERPRET, read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def triton_unavailable(device: torch.device) -> str | None:
    """Why Triton kernels cannot run on ``device``; None when they can."""
    if device.type == "cuda" or triton_interpreted():
        return None
    return (
        f"Triton kernels need a CUDA device, and this run's device is {device.type} "
        "(set TRITON_INTERPRET=1 to interpret them, slowly)"
    )
