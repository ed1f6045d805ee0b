"""Fixtures of the cache tests: a tiny KV pool on the CPU."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from moeframe.cache import KVPool


@pytest.fixture
def make_pool() -> Callable[[int], KVPool]:
    return lambda num_slots: KVPool(1, num_slots, 1, 1, 1, torch.float32, "cpu")
