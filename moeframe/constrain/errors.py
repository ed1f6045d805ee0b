"""Why a constraint was refused: each a :class:`RequestError`, so the server answers 400 and the engine serves the rest.

A constraint is either enforced while decoding or refused before the
request runs; these say which rule refused it, so a client (and a test) can
tell an unsupported keyword from an impossible schema or an oversized one.
"""

from __future__ import annotations

from moeframe.errors import RequestError


class UnsupportedKeywordError(RequestError):
    """The backend cannot enforce ``keyword`` here while decoding, so it refuses rather than ignore it."""

    def __init__(self, keyword: str, backend: str, detail: str = "") -> None:
        self.keyword = keyword
        self.backend = backend
        why = f" ({detail})" if detail else ""
        super().__init__(f"JSON schema keyword '{keyword}' is not supported by constraint backend '{backend}'{why}")


class UnsatisfiableError(RequestError):
    """No output can match the constraint (an empty regex language, a schema no instance satisfies)."""


class BudgetError(RequestError):
    """Compiling the constraint would pass its time or size budget (config group ``constraint``)."""


class DeadEndError(RequestError):
    """At run time the constraint allows no token at all: the request ends with finish_reason "error"."""
