"""Decoder constraints (registry "constraint"): regex, JSON schema, choice and grammar backends.

``CONSTRAINTS.build(cfg.constraint, tokenizer=..., vocab_size=..., eos_token_ids=...)``
gives the engine its backend; ``ConstraintSpec.from_request(...)`` a request's
spec; ``backend.new_state(backend.compile(spec))`` its state (compile raises a
:class:`RequestError` subclass for a constraint it refuses: unsupported
keyword, unsatisfiable, over budget). Each step the engine calls
:func:`mask_logits` on the batch (which reports rows that dead-end, each
with the :class:`DeadEndError` its request must end with) and, when
``backend.jump_forward``, :func:`take_forced_tokens` after each sampled token.
See :mod:`moeframe.constrain.base` for the protocol and
:mod:`moeframe.constrain.jump_forward` for the retokenisation.
"""

from moeframe.registry import Registry, import_components
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.bitmask import allocate_bitmask, apply_bitmask, bitmask_width
from moeframe.constrain.errors import BudgetError, DeadEndError, UnsatisfiableError, UnsupportedKeywordError
from moeframe.constrain.step import mask_logits, take_forced_tokens

CONSTRAINTS: Registry[ConstraintBackend] = Registry("constraint")

__all__ = [
    "BudgetError",
    "CONSTRAINTS",
    "ConstraintBackend",
    "ConstraintSpec",
    "ConstraintState",
    "DeadEndError",
    "UnsatisfiableError",
    "UnsupportedKeywordError",
    "allocate_bitmask",
    "apply_bitmask",
    "bitmask_width",
    "mask_logits",
    "take_forced_tokens",
]

import_components(__name__, __path__)
