"""Each KV slot's routes on the host: the cache keeps a cached token's routes beside its KV.

Every cache (radix, paged, none) hands out slots of the one KV pool, and a
slot holds the KV of one token; so a table with one row of routes per slot
[num_slots, MoE layers, k] keeps each cached token's routing history for as
long as its KV: a radix node or a paged block that keeps a slot keeps its
row, a prefix hit reads the rows of the slots it reuses, and a slot that
goes back to the pool has its row written over by the next token that
takes it. Each step's routes are scattered into the rows of the slots its
tokens wrote, in the order the steps ran, after their copy to the host
(``EngineCore.store_routes``); a request reads its rows when it streams or
ends. Ids are kept as int16 (every checkpoint here has fewer than 32,768
experts), weights as float32.
"""

from __future__ import annotations

import numpy as np
import torch


class SlotRoutes:
    def __init__(self, num_slots: int, num_layers: int) -> None:
        self.num_slots, self.num_layers = num_slots, num_layers
        self.ids: np.ndarray | None = None  # [num_slots, L, k] int16, -1 where nothing was routed
        self.weights: np.ndarray | None = None  # [num_slots, L, k] float32, when recorded

    def scatter(self, slots: np.ndarray, ids: torch.Tensor, weights: torch.Tensor | None) -> None:
        """Row ``slots[i]`` takes the routes of token i of a step (host tensors [T, L, k])."""
        if self.ids is None:
            shape = (self.num_slots, *ids.shape[1:])
            self.ids = np.full(shape, -1, dtype=np.int16)
            if weights is not None:
                self.weights = np.zeros(shape, dtype=np.float32)
        self.ids[slots] = ids.numpy()
        if self.weights is not None and weights is not None:
            self.weights[slots] = weights.numpy()

    def gather(self, slots: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The routes of these slots' tokens: ids [n, L, k] int32 and weights [n, L, k] float32 (or None)."""
        if self.ids is None:  # no step ran yet: only a request that computed nothing asks
            return torch.zeros((len(slots), self.num_layers, 0), dtype=torch.int32), None
        index = np.asarray(slots, dtype=np.int64)
        ids = torch.from_numpy(self.ids[index].astype(np.int32))
        weights = None if self.weights is None else torch.from_numpy(self.weights[index])
        return ids, weights
