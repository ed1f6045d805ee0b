"""The pieces a program appends to its state: text, ``gen``, ``select``, ``tool_call``, role turns, sequences.

SGLang's frontend language (Zheng et al. 2024, "SGLang: Efficient Execution
of Structured Language Model Programs") builds programs from the same
primitives; here they are plain dataclasses that a state executes in order.
``"text" + gen("x")`` makes a :class:`Seq`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from moeframe.frontend.tool_schema import function_schema


class Expr:
    def __add__(self, other: ExprLike) -> Seq:
        return Seq([self, as_expr(other)])

    def __radd__(self, other: ExprLike) -> Seq:
        return Seq([as_expr(other), self])


@dataclass
class Text(Expr):
    value: str


@dataclass
class Seq(Expr):
    parts: list[Expr] = field(default_factory=list)

    def __add__(self, other: ExprLike) -> Seq:
        return Seq([*self.parts, as_expr(other)])

    def __radd__(self, other: ExprLike) -> Seq:
        return Seq([as_expr(other), *self.parts])


@dataclass
class Gen(Expr):
    """Generate into variable ``name`` (greedy unless a temperature is given); at most one of
    regex / json_schema / choices constrains it."""

    name: str
    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    regex: str | None = None
    json_schema: dict[str, Any] | str | None = None
    choices: list[str] | None = None


@dataclass
class Select(Expr):
    """Pick one of ``choices`` into ``name``: by mean token log-probability, or greedy under a choices constraint."""

    name: str
    choices: list[str]
    method: Literal["logprob", "constraint"] = "logprob"


@dataclass
class ToolCall(Expr):
    """Let the model call one of ``tools`` (Python functions) and go on with the result.

    The model picks the function (when there are several) and writes its
    arguments under the constraint of the function's signature schema; the
    function runs on those arguments; ``name`` holds its result and
    ``name + "_call"`` the call ``{"name", "arguments"}``. See
    :mod:`moeframe.frontend.tool_step` for the text it appends.
    """

    name: str
    tools: list[Callable[..., Any]]
    schemas: list[dict[str, Any]]
    max_tokens: int = 128
    temperature: float = 0.0
    seed: int | None = None


@dataclass
class Role(Expr):
    role: str
    content: Expr


ExprLike = Union[Expr, str]


def as_expr(value: ExprLike) -> Expr:
    if isinstance(value, Expr):
        return value
    if isinstance(value, str):
        return Text(value)
    raise TypeError(f"a program appends text, gen(), select(), tool_call() or a role turn; got {type(value).__name__}")


def gen(
    name: str,
    max_tokens: int = 16,
    temperature: float = 0.0,
    top_p: float = 1.0,
    stop: str | list[str] | None = None,
    seed: int | None = None,
    regex: str | None = None,
    json_schema: dict[str, Any] | str | None = None,
    choices: list[str] | None = None,
) -> Gen:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return Gen(name, max_tokens, temperature, top_p, stops, seed, regex, json_schema, choices)


def select(name: str, choices: list[str], method: Literal["logprob", "constraint"] = "logprob") -> Select:
    if not choices or not all(isinstance(c, str) for c in choices):
        raise ValueError("select needs a non-empty list of string choices")
    if method not in ("logprob", "constraint"):
        raise ValueError(f"select method must be 'logprob' or 'constraint', got {method!r}")
    return Select(name, list(choices), method)


def tool_call(
    name: str,
    tools: Callable[..., Any] | list[Callable[..., Any]],
    max_tokens: int = 128,
    temperature: float = 0.0,
    seed: int | None = None,
) -> ToolCall:
    """A call of one of ``tools``; their schemas come from their signatures (TypeError if one cannot)."""
    functions = list(tools) if isinstance(tools, (list, tuple)) else [tools]
    if not functions or not all(callable(f) for f in functions):
        raise ValueError("tool_call needs a function or a non-empty list of functions")
    schemas = [function_schema(f) for f in functions]
    names = [s["name"] for s in schemas]
    bad = [n for n in names if not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", n)]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"tool names must be distinct and match [a-zA-Z0-9_-]{{1,64}}; got {names}")
    return ToolCall(name, functions, schemas, max_tokens, temperature, seed)


def system(content: ExprLike) -> Role:
    return Role("system", as_expr(content))


def user(content: ExprLike) -> Role:
    return Role("user", as_expr(content))


def assistant(content: ExprLike) -> Role:
    return Role("assistant", as_expr(content))
