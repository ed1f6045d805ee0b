"""The expert-load tests run their kernels compiled on CUDA and under Triton's interpreter on the CPU.

The root conftest sets TRITON_INTERPRET before Triton is first imported.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
