"""Kernel tests run compiled on CUDA, and under Triton's interpreter on the CPU (CI).

TRITON_INTERPRET must be set before a kernel is defined. moeframe imports its
kernel modules lazily, so setting it here, at collection, is early enough; a
kernel module that an earlier test module already imported is reloaded so its
kernels are defined again, interpreted.
"""

from __future__ import annotations

import importlib
import os
import sys

import pytest
import torch

KERNEL_MODULES = ("moeframe.experts._fused_moe_kernels", "moeframe.attention.triton_decode", "moeframe.attention.triton_extend")

if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
    os.environ["TRITON_INTERPRET"] = "1"
    for name in KERNEL_MODULES:
        if name in sys.modules:
            importlib.reload(sys.modules[name])


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def low_precision(device: torch.device) -> torch.dtype:
    """bf16 where it is computed natively; fp16 under the interpreter, which gets bf16 wrong."""
    return torch.bfloat16 if device.type == "cuda" else torch.float16
