"""A Python function's signature -> the JSON schema of its arguments (an OpenAI function definition).

The DSL's ``tool_call`` constrains the model's arguments to this schema, so
a function can be called with them as they come. Supported annotations:
``str``, ``int``, ``float``, ``bool``, ``None``, ``Literal[...]``,
``list[T]``, ``T | U`` (``Optional[T]``); a parameter with a default is
optional. Anything else (no annotation, ``*args``, a class) raises
TypeError naming the parameter, rather than letting the model guess.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, Union

SCALARS: dict[Any, dict[str, Any]] = {
    str: {"type": "string"},
    int: {"type": "integer"},
    float: {"type": "number"},
    bool: {"type": "boolean"},
    type(None): {"type": "null"},
}


def type_schema(annotation: Any, where: str) -> dict[str, Any]:
    if annotation in SCALARS:
        return dict(SCALARS[annotation])
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Literal:
        if not all(isinstance(a, (str, int, float, bool)) or a is None for a in args):
            raise TypeError(f"{where}: Literal values must be str, int, float, bool or None")
        return {"enum": list(args)}
    if origin is list and len(args) == 1:
        return {"type": "array", "items": type_schema(args[0], where)}
    if origin in (Union, types.UnionType):
        return {"anyOf": [type_schema(a, where) for a in args]}
    raise TypeError(f"{where}: the annotation {annotation!r} has no JSON schema here (use str, int, float, bool, "
                    "None, Literal, list[...] or a union of them)")


def function_schema(fn: Callable[..., Any]) -> dict[str, Any]:
    """``{"name", "description", "parameters"}`` of ``fn``; the description is its docstring's first paragraph."""
    name = getattr(fn, "__name__", "")
    hints = typing.get_type_hints(fn)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        where = f"parameter '{param.name}' of {name}"
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise TypeError(f"{where}: a tool is called with keyword arguments only (no *args, **kwargs, or /)")
        if param.name not in hints:
            raise TypeError(f"{where} has no type annotation, so its arguments cannot be constrained")
        properties[param.name] = type_schema(hints[param.name], where)
        if param.default is param.empty:
            required.append(param.name)
    doc = inspect.getdoc(fn) or ""
    return {
        "name": name,
        "description": doc.split("\n\n")[0].strip(),
        "parameters": {"type": "object", "properties": properties, "required": required, "additionalProperties": False},
    }
