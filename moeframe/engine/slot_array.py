"""A request's KV slot list mirrored in a numpy array that grows by appends.

A decode step needs the slots of every request's whole context as one int64
array. Converting the Python list each step costs time linear in the context
(tens of microseconds per thousand slots); a decoding request only gains one
slot per step, so the mirror copies just the new ones. SGLang and vLLM keep
the same data in a persistent request-to-token / block table for the same reason.

The mirror relies on how the scheduler edits ``Request.slots``: it grows the
list in place (``extend``) and rebinds a new list for any other change
(admission, prefix caching, release). A different list object, a shorter
list, or a changed last mirrored slot makes it copy the list afresh.
"""

from __future__ import annotations

import numpy as np

MIN_CAPACITY = 64


class SlotArray:
    def __init__(self) -> None:
        self.source: list[int] | None = None
        self.array = np.empty(0, dtype=np.int64)
        self.length = 0

    def sync(self, slots: list[int]) -> np.ndarray:
        """A view of ``slots`` as int64 (valid until the next ``sync``)."""
        n, done = len(slots), self.length
        if slots is not self.source or n < done or (done and slots[done - 1] != self.array[done - 1]):
            self.source, done = slots, 0
        if n > done:
            if n > self.array.shape[0]:
                grown = np.empty(max(n, 2 * self.array.shape[0], MIN_CAPACITY), dtype=np.int64)
                grown[:done] = self.array[:done]
                self.array = grown
            self.array[done:n] = slots[done:n]
        self.length = n
        return self.array[:n]
