"""Tagged JSON segments, alone or inside free text: the constraint behind tool calls.

A structural tag (SGLang's ``structural_tag`` response format; xgrammar's
``triggered_tags`` and ``tags_with_separator`` formats) lists tags, each
``begin`` + one JSON value of ``schema`` + ``end``. With ``free_text`` the
output is any text in which every occurrence of ``trigger`` opens one of the
tags: the model may answer in words or start a tag, and once it has written
the trigger the rest of the tag is constrained (OpenAI ``tool_choice="auto"``).
Without it the output is one or more tags joined by ``separator`` and nothing
else (``tool_choice="required"`` or a named function). ``stop_after_first``
ends the output after the first tag (``parallel_tool_calls=false``).

Backends compile it their own way: xgrammar through its structural-tag
formats, ``fsm`` through :func:`structural_tag_regex`, which spells free text
as the regular language of strings that do not contain the trigger.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from moeframe.errors import RequestError


@dataclass(frozen=True, eq=False)
class Tag:
    begin: str
    schema: dict[str, Any]
    end: str


@dataclass(frozen=True, eq=False)
class StructuralTag:
    tags: tuple[Tag, ...]
    trigger: str
    free_text: bool = False
    stop_after_first: bool = False
    separator: str = ""

    def __post_init__(self) -> None:
        if not self.tags:
            raise RequestError("a structural tag needs at least one tag")
        if not self.trigger:
            raise RequestError("a structural tag needs a non-empty trigger")
        for tag in self.tags:
            if not tag.begin.startswith(self.trigger):
                raise RequestError(f"tag begin {tag.begin!r} does not start with the trigger {self.trigger!r}")
            if not isinstance(tag.schema, dict):
                raise RequestError(f"a tag's schema must be a JSON object, got {type(tag.schema).__name__}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _code_point(char: str) -> str:
    """``char`` as an escape that our regex parser and Python's read alike, inside or outside a class."""
    return f"\\U{ord(char):08x}"


def avoiding_regex(trigger: str) -> str:
    """A regex of exactly the strings that do not contain ``trigger``.

    Such a string is a sequence of units: a character other than the
    trigger's first; or a proper prefix of the trigger cut short by a
    character that neither continues it nor starts it again; or a proper
    prefix cut short by the next one (``<to<tool``), which the ``{prefix}*``
    before each unit and at the end absorbs. That reading needs the first
    character to occur only once in the trigger (true of ``<tool_call>``),
    otherwise a cut-short prefix could hide the start of a match.
    """
    first = trigger[0]
    if first in trigger[1:]:
        raise RequestError(
            f"the trigger {trigger!r} repeats its first character; the fsm backend cannot keep it out of free text"
        )
    if len(trigger) == 1:
        return f"[^{_code_point(first)}]*"
    prefixes = [trigger[:i] for i in range(1, len(trigger))]
    any_prefix = "(?:" + "|".join(re.escape(p) for p in prefixes) + ")"
    cut_short = "|".join(
        f"{re.escape(p)}[^{_code_point(first)}{_code_point(trigger[len(p)])}]" for p in prefixes
    )
    return f"(?:[^{_code_point(first)}]|{any_prefix}*(?:{cut_short}))*{any_prefix}*"


def structural_tag_regex(tag: StructuralTag, schema_regex: Callable[[dict[str, Any]], str]) -> str:
    """The regex of ``tag``'s language, with each schema spelled by ``schema_regex``."""
    spelled = (re.escape(t.begin) + f"(?:{schema_regex(t.schema)})" + re.escape(t.end) for t in tag.tags)
    one = "(?:" + "|".join(spelled) + ")"
    if tag.free_text:
        free = avoiding_regex(tag.trigger)
        return f"{free}{one}?" if tag.stop_after_first else f"{free}(?:{one}{free})*"
    return one if tag.stop_after_first else f"{one}(?:{re.escape(tag.separator)}{one})*"
