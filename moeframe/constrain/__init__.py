"""Decoder constraints (registry "constraint"): regex, JSON schema, choice and grammar backends.

``CONSTRAINTS.build(cfg.constraint, tokenizer=..., vocab_size=..., eos_token_ids=...)``
gives the engine its backend; see :mod:`moeframe.constrain.base` for the
per-step protocol and :mod:`moeframe.constrain.jump_forward` for jump-forward.
"""

from moeframe.registry import Registry, import_components
from moeframe.constrain.base import ConstraintBackend, ConstraintSpec, ConstraintState
from moeframe.constrain.bitmask import allocate_bitmask, apply_bitmask, bitmask_width

CONSTRAINTS: Registry[ConstraintBackend] = Registry("constraint")

__all__ = [
    "CONSTRAINTS",
    "ConstraintBackend",
    "ConstraintSpec",
    "ConstraintState",
    "allocate_bitmask",
    "apply_bitmask",
    "bitmask_width",
]

import_components(__name__, __path__)
