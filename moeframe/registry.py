"""Name -> builder tables, one per component family.

A component registers under a name together with a params dataclass. A config
node ``{name: ..., **params}`` is turned into a component by ``build``: the
params are checked against the dataclass (unknown keys, wrong types, values
its ``__post_init__`` rejects), so a bad sweep dies at start with one line
that names the key and the valid choices (the Hydra habit of structured
configs, as lightning-hydra-template uses them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from moeframe.errors import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class NoParams:
    """Params of a component that takes none."""


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    builder: Callable[..., T]
    params_cls: type


class Registry(Generic[T]):
    """Components of one family (``router``, ``cache``, ...) by registered name."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, params: type = NoParams) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def add(builder: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.family} '{name}' is registered twice")
            self._entries[name] = Entry(name, builder, params)
            return builder

        return add

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise ConfigError(
                f"{self.family}.name: unknown choice '{name}'; valid choices: {', '.join(self.names())}"
            )
        return self._entries[name]

    def parse_params(self, node: Mapping[str, Any] | DictConfig) -> tuple[Entry[T], Any]:
        """Validate a ``{name, **params}`` node into the component's params dataclass."""
        raw = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        if "name" not in raw:
            raise ConfigError(f"{self.family}: missing 'name'; valid choices: {', '.join(self.names())}")
        entry = self.entry(str(raw.pop("name")))
        fields = {f.name for f in dataclasses.fields(entry.params_cls)}
        for key in raw:
            if key not in fields:
                valid = ", ".join(sorted(fields)) or "none"
                raise ConfigError(f"{self.family}.{key}: not an option of {self.family} '{entry.name}'; valid options: {valid}")
        try:
            typed = OmegaConf.merge(OmegaConf.structured(entry.params_cls), raw)
            params = OmegaConf.to_object(typed)
        except OmegaConfBaseException as err:
            key = getattr(err, "full_key", None) or "?"
            raise ConfigError(f"{self.family}.{key}: {err.msg if hasattr(err, 'msg') else err}") from None
        except ValueError as err:
            raise ConfigError(f"{self.family} '{entry.name}': {err}") from None
        return entry, params

    def build(self, node: Mapping[str, Any] | DictConfig, **deps: Any) -> T:
        """Build the component a config node names, passing ``deps`` (model spec, device, ...) through."""
        entry, params = self.parse_params(node)
        try:
            return entry.builder(params, **deps)
        except ConfigError:
            raise
        except ValueError as err:
            raise ConfigError(f"{self.family} '{entry.name}': {err}") from None


def import_components(package: str, path: list[str]) -> None:
    """Import every module of a component package, so each registers itself.

    A new variant is then one module dropped into the package: nothing else
    has to list it.
    """
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if not info.name.startswith("_"):
            importlib.import_module(f"{package}.{info.name}")
