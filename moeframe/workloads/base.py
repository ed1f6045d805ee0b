"""The workload interface: drive an engine, return a flat dict of metrics."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moeframe.api import Engine


class Workload(ABC):
    @abstractmethod
    def run(self, engine: "Engine") -> dict[str, Any]:
        """Send the workload's requests and return its metrics."""
