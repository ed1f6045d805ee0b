"""A program's state ``s``: its text so far, its variables, and a worker that runs what is appended.

As in SGLang's stream executor, ``s += expr`` only queues ``expr``; a
worker thread per state runs the queue in order, so the branches of a
``fork`` (each a state with its own worker) generate at the same time and
share the engine's batches. Reading ``s[name]`` or ``s.text()`` waits for
the work it depends on. ``fork(n)`` first computes the shared text once
(``Backend.cache_prefix``), so the prefix cache serves it to every branch.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from moeframe.frontend.backend import Backend
from moeframe.frontend.ir import Expr, ExprLike, Gen, Role, Select, Seq, Text, ToolCall, as_expr
from moeframe.frontend.tool_step import run_tool_call
from moeframe.server.tool_format import HERMES


class ProgramState:
    def __init__(self, backend: Backend, text: str = "", variables: dict[str, Any] | None = None) -> None:
        self.backend = backend
        self._text = text
        self._variables: dict[str, Any] = dict(variables or {})
        self._messages: list[dict[str, str]] = []
        self._tool_responses: list[str] = []  # results of calls made inside the role turn being run
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moeframe-program")
        self._pending: list[Future[None]] = []
        self._lock = threading.Lock()
        self._failed: BaseException | None = None

    # ---- building ----
    def __iadd__(self, expr: ExprLike) -> "ProgramState":
        node = as_expr(expr)
        with self._lock:
            self._pending.append(self._worker.submit(self._run_step, node))
        return self

    def fork(self, n: int) -> "ForkGroup":
        """n branches that start from this state's text; the text is computed once for all of them."""
        if n < 1:
            raise ValueError(f"fork needs n >= 1, got {n}")
        self.sync()
        if n > 1:
            self.backend.cache_prefix(self._text)
        return ForkGroup([ProgramState(self.backend, self._text, self._variables) for _ in range(n)])

    def set_var(self, name: str, value: Any) -> None:
        """Store a value (say, results gathered from forks) as a variable, after the work queued so far."""
        self.sync()
        self._variables[name] = value

    # ---- reading ----
    def sync(self) -> None:
        """Wait for everything appended so far; re-raises the first error of a step."""
        with self._lock:
            pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def text(self) -> str:
        self.sync()
        return self._text

    def messages(self) -> list[dict[str, str]]:
        """The role turns appended so far, as chat messages."""
        self.sync()
        return [dict(m) for m in self._messages]

    def __getitem__(self, name: str) -> Any:
        self.sync()
        if name not in self._variables:
            raise KeyError(f"no variable '{name}'; this state has {sorted(self._variables)}")
        return self._variables[name]

    def __contains__(self, name: str) -> bool:
        self.sync()
        return name in self._variables

    # ---- running (worker thread) ----
    def _run_step(self, node: Expr) -> None:
        """Run one appended expression; after a failure the rest of the program is skipped."""
        if self._failed is not None:
            raise RuntimeError("an earlier step of this program failed") from self._failed
        try:
            self._run(node, None)
        except BaseException as err:
            self._failed = err
            raise

    def _run(self, node: Expr, role: str | None) -> None:
        if isinstance(node, Text):
            self._text += node.value
        elif isinstance(node, Seq):
            for part in node.parts:
                self._run(part, role)
        elif isinstance(node, Gen):
            stop_ids = self.backend.end_of_turn_ids if role == "assistant" else []
            value = self.backend.generate(self._text, node, stop_ids)
            self._text += value
            self._variables[node.name] = value
        elif isinstance(node, Select):
            value = self.backend.select(self._text, node)
            self._text += value
            self._variables[node.name] = value
        elif isinstance(node, ToolCall):
            self._run_tool_call(node, role)
        elif isinstance(node, Role):
            self._run_role(node)
        else:
            raise TypeError(f"cannot run {type(node).__name__}")

    def _run_role(self, node: Role) -> None:
        before, after = self.backend.chat.role_affixes(node.role)
        self._text += before
        start = len(self._text)
        self._run(node.content, node.role)
        self._messages.append({"role": node.role, "content": self._text[start:]})
        self._text += after
        if self._tool_responses:
            responses, self._tool_responses = self._tool_responses, []
            self._run_role(Role("user", Text(HERMES.separator.join(responses))))

    def _run_tool_call(self, node: ToolCall, role: str | None) -> None:
        """The call goes where the program is; its result right after it, or, inside a role, in a user turn
        after that turn (where Qwen2.5's template puts tool results)."""
        outcome = run_tool_call(self.backend, self._text, node)
        self._text += outcome.call_text
        self._variables[node.name] = outcome.result
        self._variables[f"{node.name}_call"] = outcome.call
        if role is None:
            self._text += HERMES.separator + outcome.response_text
        else:
            self._tool_responses.append(outcome.response_text)


class ForkGroup:
    """The branches of a fork: iterate them, index them, or wait for all with ``join``."""

    def __init__(self, states: list[ProgramState]) -> None:
        self.states = states

    def __iter__(self) -> Iterator[ProgramState]:
        return iter(self.states)

    def __getitem__(self, i: int) -> ProgramState:
        return self.states[i]

    def __len__(self) -> int:
        return len(self.states)

    def join(self) -> None:
        for state in self.states:
            state.sync()
