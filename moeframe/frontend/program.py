"""``@function`` programs: a Python function over a state ``s``, run on a backend, alone or in batches.

    @function
    def qa(s, question):
        s += user(question)
        s += assistant(gen("answer", max_tokens=32))

    state = qa.run(question="Why?", backend=EngineBackend(engine))
    state["answer"]

``run_batch`` runs many programs on threads, so their requests share the
engine's continuous batches (SGLang's ``run_batch``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from moeframe.frontend.backend import Backend
from moeframe.frontend.state import ProgramState

_default_backend: Backend | None = None


def set_default_backend(backend: Backend | None) -> None:
    global _default_backend
    _default_backend = backend


def _backend(backend: Backend | None) -> Backend:
    chosen = backend or _default_backend
    if chosen is None:
        raise ValueError("no backend: pass backend=... or call set_default_backend(...)")
    return chosen


class Program:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        functools.update_wrapper(self, fn)

    def run(self, *args: Any, backend: Backend | None = None, **kwargs: Any) -> ProgramState:
        """Run the program to completion on one state; errors of any step are raised here."""
        state = ProgramState(_backend(backend))
        self.fn(state, *args, **kwargs)
        state.sync()
        return state

    def run_batch(
        self, batch_kwargs: list[dict[str, Any]], backend: Backend | None = None, num_threads: int | None = None
    ) -> list[ProgramState]:
        """One run per kwargs dict, concurrently; states come back in the order of ``batch_kwargs``."""
        chosen = _backend(backend)
        workers = num_threads or max(1, min(64, len(batch_kwargs)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="moeframe-batch") as pool:
            futures = [pool.submit(self.run, backend=chosen, **kwargs) for kwargs in batch_kwargs]
            return [f.result() for f in futures]


def function(fn: Callable[..., Any]) -> Program:
    """Make ``fn(s, ...)`` a program."""
    return Program(fn)
