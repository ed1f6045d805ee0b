"""conf/cache/*.yaml build their components, and bad values die at build with the key named."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from moeframe.cache import CACHES, KVPool
from moeframe.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "conf" / "cache"


@pytest.mark.parametrize("choice", ["none", "radix", "paged"])
def test_each_cache_yaml_builds_its_registered_component(choice: str, make_pool: Callable[[int], KVPool]) -> None:
    node = OmegaConf.load(CONF / f"{choice}.yaml")
    cache = CACHES.build(node, pool=make_pool(64))
    assert CACHES.entry(choice).builder is type(cache)
    assert cache.num_cached_tokens() == 0


@pytest.mark.parametrize(
    ("node", "message"),
    [
        ({"name": "radix", "page_size": 0}, "page_size must be >= 1"),
        ({"name": "paged", "block_size": 0}, "block_size must be >= 1"),
        ({"name": "paged", "page_size": 4}, "not an option of cache 'paged'"),
    ],
)
def test_bad_cache_options_are_rejected_with_the_key_named(
    node: dict, message: str, make_pool: Callable[[int], KVPool]
) -> None:
    with pytest.raises(ConfigError, match=message):
        CACHES.build(node, pool=make_pool(64))
