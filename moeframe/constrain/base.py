"""The decoder-constraint interface: a request's spec, a backend that compiles it, a per-request state.

The engine builds one :class:`ConstraintBackend` per run (``constraint=...``),
compiles each constrained request's :class:`ConstraintSpec` once (compiled
constraints are cached by spec, so a workload of one schema compiles once),
and keeps one :class:`ConstraintState` per request. Each decode step it asks
every constrained state to fill its row of a batch bitmask, applies the whole
bitmask to the logits in one operation (:func:`moeframe.constrain.bitmask.apply_bitmask`),
samples, and advances each state by its sampled token. This is the split
SGLang and vLLM use around xgrammar; backends differ only behind it.
"""

from __future__ import annotations

import json
import re
from abc import ABC, abstractmethod
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import jsonschema
import torch

from moeframe.constrain.errors import DeadEndError
from moeframe.constrain.jump_forward import encode_forced
from moeframe.constrain.structural_tag import StructuralTag
from moeframe.constrain.vocab import TokenVocab
from moeframe.errors import RequestError

KINDS = ("regex", "json_schema", "choices", "grammar", "json_object", "structural_tag")


@dataclass(frozen=True, eq=False)
class ConstraintSpec:
    """What one request's output must match: exactly one of the fields.

    ``json_object`` asks for any JSON object (OpenAI's ``response_format``
    ``json_object``); ``structural_tag`` for tagged JSON segments, alone or
    inside free text (tool calls; see :mod:`moeframe.constrain.structural_tag`).
    A bad value raises :class:`RequestError`, so the engine rejects that
    request alone.
    """

    regex: str | None = None
    json_schema: dict[str, Any] | str | None = None
    choices: list[str] | None = None
    grammar: str | None = None
    json_object: bool = False
    structural_tag: StructuralTag | None = None

    def __post_init__(self) -> None:
        given = self._given()
        if len(given) != 1:
            which = ", ".join(given) if given else "none"
            raise RequestError(f"a constraint takes exactly one of {', '.join(KINDS)}; got {which}")
        if self.regex is not None:
            if not isinstance(self.regex, str):
                raise RequestError(f"regex must be a string, got {type(self.regex).__name__}")
            try:
                re.compile(self.regex)
            except re.error as err:
                raise RequestError(f"invalid regex {self.regex!r}: {err}") from None
        if self.json_schema is not None:
            _check_schema(self.schema())
        if self.choices is not None:
            if not isinstance(self.choices, (list, tuple)) or not self.choices:
                raise RequestError("choices must be a non-empty list of strings")
            if not all(isinstance(c, str) for c in self.choices):
                raise RequestError("every choice must be a string")
        if self.grammar is not None and (not isinstance(self.grammar, str) or not self.grammar.strip()):
            raise RequestError("grammar must be a non-empty EBNF string")
        if self.structural_tag is not None:
            if not isinstance(self.structural_tag, StructuralTag):
                raise RequestError(f"structural_tag must be a StructuralTag, got {type(self.structural_tag).__name__}")
            for tag in self.structural_tag.tags:
                _check_schema(tag.schema)

    @classmethod
    def from_request(
        cls,
        regex: str | None = None,
        json_schema: dict[str, Any] | str | None = None,
        choices: list[str] | None = None,
        grammar: str | None = None,
        json_object: bool = False,
        structural_tag: StructuralTag | None = None,
    ) -> "ConstraintSpec | None":
        """The spec of a request's sampling fields, or None when the request is unconstrained."""
        fields = dict(regex=regex, json_schema=json_schema, choices=choices, grammar=grammar, structural_tag=structural_tag)
        if all(v is None for v in fields.values()) and not json_object:
            return None
        return cls(**fields, json_object=json_object)

    def _given(self) -> list[str]:
        return [k for k in KINDS if (self.json_object if k == "json_object" else getattr(self, k) is not None)]

    @property
    def kind(self) -> str:
        """Which field is set: one of ``KINDS``."""
        return self._given()[0]

    def schema(self) -> dict[str, Any]:
        """The JSON schema as a dict (``json_object`` is the schema of any object)."""
        if self.json_object:
            return {"type": "object"}
        if isinstance(self.json_schema, str):
            try:
                parsed = json.loads(self.json_schema)
            except json.JSONDecodeError as err:
                raise RequestError(f"json_schema is not valid JSON: {err}") from None
        else:
            parsed = self.json_schema
        if not isinstance(parsed, dict):
            raise RequestError(f"json_schema must be a JSON object, got {type(parsed).__name__}")
        return parsed

    @property
    def cache_key(self) -> tuple[str, str]:
        if self.kind in ("json_schema", "json_object"):
            return self.kind, json.dumps(self.schema(), sort_keys=True)
        if self.kind == "choices":
            return self.kind, json.dumps(list(self.choices or []))
        if self.kind == "structural_tag":
            return self.kind, json.dumps(self.structural_tag.as_dict(), sort_keys=True)
        return self.kind, str(getattr(self, self.kind))


def _check_schema(schema: dict[str, Any]) -> None:
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as err:
        raise RequestError(f"invalid JSON schema: {err.message}") from None


class ConstraintState(ABC):
    """One request's position in its constraint.

    EOS is allowed exactly when :meth:`is_terminal`; a terminal state with no
    other continuation allows EOS only, so generation ends there.
    """

    def __init__(self, vocab: TokenVocab, eos_token_ids: tuple[int, ...]) -> None:
        self.vocab = vocab
        self.eos_token_ids = eos_token_ids

    @abstractmethod
    def fill_bitmask(self, bitmask: torch.Tensor, row: int) -> None:
        """Write this state's allowed tokens into ``bitmask[row]`` (CPU int32 [B, ceil(V/32)])."""

    def dead_end(self, bitmask: torch.Tensor, row: int) -> DeadEndError | None:
        """After :meth:`fill_bitmask`: the error to end this request with if its row allows no token, else None.

        Compilation refuses constraints whose language is empty where that is
        decidable, but a tokenizer may still lack every token a state needs;
        the engine then ends this request alone with finish_reason "error"
        (sampling from an all-masked row would be undefined).
        """
        if bool(bitmask[row].any()):
            return None
        return DeadEndError("the constraint allows no token after the output so far: no token spells a valid continuation")

    @abstractmethod
    def advance(self, token_id: int) -> bool:
        """Consume ``token_id``; False (state unchanged) if the constraint rejects it."""

    @abstractmethod
    def is_terminal(self) -> bool:
        """Whether the output so far is complete, so EOS may follow."""

    @abstractmethod
    def forced_bytes(self) -> bytes:
        """The bytes every valid continuation starts with (empty when the next byte is free)."""

    @abstractmethod
    def rollback(self, num_tokens: int) -> None:
        """Undo the last ``num_tokens`` advances (for re-tokenised jump-forward and speculation)."""

    def forced_continuation(self) -> list[int]:
        """Token ids spelling :meth:`forced_bytes`, for a jump-forward extend step; empty if none.

        The state is not advanced: the engine advances it by each returned
        token as it appends them. See :mod:`moeframe.constrain.jump_forward`
        for how the boundary is tokenised.
        """
        return encode_forced(self.vocab, self.forced_bytes())


class ConstraintBackend(ABC):
    """Compiles specs for one tokenizer and makes per-request states; built once per engine."""

    def __init__(self, vocab: TokenVocab, eos_token_ids: tuple[int, ...], jump_forward: bool, cache_size: int) -> None:
        if not eos_token_ids:
            raise ValueError("a constraint backend needs at least one EOS token id")
        self.vocab = vocab
        self.eos_token_ids = tuple(eos_token_ids)
        self.jump_forward = jump_forward
        self.cache_size = cache_size
        self._compiled: OrderedDict[tuple[str, str], Any] = OrderedDict()

    @property
    def vocab_size(self) -> int:
        return self.vocab.vocab_size

    def compile(self, spec: ConstraintSpec) -> Any:
        """The compiled form of ``spec``, from the cache when seen before; RequestError if unsupported."""
        key = spec.cache_key
        if key in self._compiled:
            self._compiled.move_to_end(key)
            return self._compiled[key]
        compiled = self._compile(spec)
        self._compiled[key] = compiled
        if len(self._compiled) > self.cache_size:
            self._compiled.popitem(last=False)
        return compiled

    @abstractmethod
    def _compile(self, spec: ConstraintSpec) -> Any:
        """Compile without caching."""

    @abstractmethod
    def new_state(self, compiled: Any) -> ConstraintState:
        """A fresh state at the start of ``compiled``."""
