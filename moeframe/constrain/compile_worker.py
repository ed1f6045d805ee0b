"""Compile in a child process under a wall-clock and memory budget, for compilers that cannot be interrupted.

xgrammar compiles in C++ without a way to stop it: one real-world schema
took 209 s, and nothing bounds its memory. So the compiler runs in a child
process whose address space is capped (``RLIMIT_AS``); the parent waits at
most ``timeout_s`` for an answer, then kills the child and raises
:class:`BudgetError` (the next call starts a fresh one). The child runs a
standalone script (see :mod:`moeframe.constrain.xgrammar_process`) that
imports only its compiler, not moeframe, so it starts in seconds; its
start-up is not charged to any request's budget. Workers are shared by every
backend built with the same arguments in this process (tests and
``Engine.variant`` build many). Calls and answers are pickled over two
pipes of their own, so nothing the compiler prints can corrupt them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from moeframe.constrain.errors import BudgetError
from moeframe.errors import RequestError

START_TIMEOUT_S = 300.0


class CompileWorker:
    """One child process running ``script``, built from ``init`` and answering one call at a time."""

    def __init__(self, script: str, init: Any, timeout_s: float, memory_mb: int) -> None:
        self.script, self.init = script, init
        self.timeout_s, self.memory_mb = timeout_s, memory_mb
        self.process: subprocess.Popen | None = None
        self.send: Connection | None = None
        self.recv: Connection | None = None
        self.lock = threading.Lock()

    def call(self, method: str, *args: Any) -> Any:
        """``method(*args)`` in the child; BudgetError past the budget, RequestError if the child refused."""
        with self.lock:
            if self.process is None or self.process.poll() is not None:
                self._start()
            assert self.send is not None and self.recv is not None
            self.send.send((method, args))
            answer = self._answer(self.timeout_s, f"compiling passed its time budget ({self.timeout_s:g} s in the compiler process; compile_timeout_s)")
        status, value = answer
        if status == "ok":
            return value
        if status == "budget":  # a compiler that ran out of memory mid-way is not trusted with the next call
            with self.lock:
                self._stop()
            raise BudgetError(value)
        raise RequestError(value)

    def _answer(self, timeout_s: float, late: str) -> Any:
        assert self.recv is not None
        try:
            if self.recv.poll(timeout_s):
                return self.recv.recv()
        except (EOFError, OSError):
            self._stop()
            raise BudgetError(
                f"the compiler process died (over the memory budget of {self.memory_mb} MB, compile_memory_mb, or a crash)"
            ) from None
        self._stop()
        raise BudgetError(late)

    def _start(self) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        self.process = subprocess.Popen(
            [sys.executable, self.script, str(to_child_r), str(from_child_w), str(self.memory_mb)],
            pass_fds=(to_child_r, from_child_w),
            stdin=subprocess.DEVNULL,
            # glibc reserves 64 MB of address space per thread arena; the cap is on address space
            env={**os.environ, "MALLOC_ARENA_MAX": "2"},
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self.send, self.recv = Connection(to_child_w, readable=False), Connection(from_child_r, writable=False)
        self.send.send(self.init)
        status, value = self._answer(START_TIMEOUT_S, f"the compiler process did not start within {START_TIMEOUT_S:g} s")
        if status != "ready":
            self._stop()
            raise RequestError(f"the compiler process failed to start: {value}")

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait()
        for conn in (self.send, self.recv):
            if conn is not None:
                conn.close()
        self.process, self.send, self.recv = None, None, None


_WORKERS: dict[tuple, CompileWorker] = {}
_WORKERS_LOCK = threading.Lock()


def shared_worker(script: str, init: Any, key: tuple, timeout_s: float, memory_mb: int) -> CompileWorker:
    """The process-wide worker for ``script``, ``key`` (``init`` summarised) and budget."""
    full_key = (script, key, timeout_s, memory_mb)
    with _WORKERS_LOCK:
        if full_key not in _WORKERS:
            _WORKERS[full_key] = CompileWorker(script, init, timeout_s, memory_mb)
        return _WORKERS[full_key]
