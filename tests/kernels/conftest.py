"""Kernel tests run compiled on CUDA, and under Triton's interpreter on the CPU (CI).

TRITON_INTERPRET must be set before Triton is first imported; the root
conftest does it for the whole suite, and this repeats it for runs that skip
the root conftest (``--confcutdir``).
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(scope="session")
def low_precision(device: torch.device) -> torch.dtype:
    """bf16 where it is computed natively; fp16 under the interpreter, which gets bf16 wrong."""
    return torch.bfloat16 if device.type == "cuda" else torch.float16
