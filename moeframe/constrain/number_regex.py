"""Regexes for JSON numbers inside bounds.

A bounded integer becomes an alternation of digit-range pieces, split by
length and by leading digit (the construction regex range generators use).
A bounded number with integral bounds is an integer part in range plus a
fraction, where the top magnitude may only take zero fraction digits; bounds
with a fractional part are not expressed and raise :class:`RequestError`.
Output never has leading zeros or ``-0``, so it is canonical JSON.
"""

from __future__ import annotations

import math

from moeframe.errors import RequestError

UNBOUNDED_INTEGER = r"-?(?:0|[1-9][0-9]*)"
UNBOUNDED_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
FRACTION = r"(?:\.[0-9]+)?"
ZERO_FRACTION = r"(?:\.0+)?"


def _same_length(lo: str, hi: str) -> str:
    """Digit strings of equal length between ``lo`` and ``hi`` inclusive."""
    if len(lo) == 1:
        return lo if lo == hi else f"[{lo}-{hi}]"
    if lo[0] == hi[0]:
        return lo[0] + _same_length(lo[1:], hi[1:])
    rest = len(lo) - 1
    parts = []
    if lo[1:] == "0" * rest:
        first_full = lo[0]
    else:
        parts.append(lo[0] + _same_length(lo[1:], "9" * rest))
        first_full = str(int(lo[0]) + 1)
    if hi[1:] == "9" * rest:
        last_full = hi[0]
    else:
        last_full = str(int(hi[0]) - 1)
    if int(first_full) <= int(last_full):
        digit = first_full if first_full == last_full else f"[{first_full}-{last_full}]"
        parts.append(f"{digit}[0-9]{{{rest}}}")
    if hi[1:] != "9" * rest:
        parts.append(hi[0] + _same_length("0" * rest, hi[1:]))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def natural_range(lo: int, hi: int | None) -> str:
    """Non-negative integers in ``[lo, hi]`` (``hi=None``: unbounded), without leading zeros."""
    if lo < 0 or (hi is not None and hi < lo):
        raise ValueError(f"bad natural range [{lo}, {hi}]")
    parts = []
    length = len(str(lo))
    top = hi if hi is not None else 10 ** length - 1
    start = lo
    while start <= top:
        end = min(top, 10 ** len(str(start)) - 1)
        parts.append(_same_length(str(start), str(end)))
        start = end + 1
    if hi is None:
        parts.append(f"[1-9][0-9]{{{length},}}")
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def integer_range(lo: int | None, hi: int | None) -> str:
    """Integers in ``[lo, hi]``; either bound may be missing."""
    if lo is not None and hi is not None and lo > hi:
        raise RequestError(f"integer bounds are empty: minimum {lo} > maximum {hi}")
    parts = []
    if hi is None or hi >= 0:
        parts.append(natural_range(max(lo, 0) if lo is not None else 0, hi))
    if lo is None or lo < 0:
        top_magnitude = -lo if lo is not None else None
        low_magnitude = max(1, -hi) if hi is not None else 1
        parts.append("-" + natural_range(low_magnitude, top_magnitude))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def number_range(lo: float | None, hi: float | None) -> str:
    """Decimal numbers in ``[lo, hi]`` (no exponent), for integral bounds."""
    for bound in (lo, hi):
        if bound is not None and bound != math.floor(bound):
            raise RequestError(f"fsm backend supports only integral number bounds, got {bound}")
    lo_i = int(lo) if lo is not None else None
    hi_i = int(hi) if hi is not None else None
    if lo_i is not None and hi_i is not None and lo_i > hi_i:
        raise RequestError(f"number bounds are empty: minimum {lo} > maximum {hi}")
    parts = []
    if hi_i is None or hi_i >= 0:
        parts.append(_magnitudes(max(lo_i, 0) if lo_i is not None else 0, hi_i))
    if lo_i is None or lo_i < 0:
        low = max(0, -hi_i) if hi_i is not None else 0
        parts.append("-" + _negative_magnitudes(low, -lo_i if lo_i is not None else None))
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _magnitudes(lo: int, hi: int | None) -> str:
    """Non-negative decimals in ``[lo, hi]``: the top magnitude takes only zero fraction digits."""
    if hi is None:
        return natural_range(lo, None) + FRACTION
    parts = [natural_range(lo, hi - 1) + FRACTION] if lo < hi else []
    parts.append(natural_range(hi, hi) + ZERO_FRACTION)
    return parts[0] if len(parts) == 1 else "(?:" + "|".join(parts) + ")"


def _negative_magnitudes(lo: int, hi: int | None) -> str:
    """Magnitudes in ``[lo, hi]`` to follow a '-': never a spelling of zero, so no "-0"."""
    if lo > 0:
        return _magnitudes(lo, hi)
    below_one = r"0\.[0-9]*[1-9][0-9]*"
    return "(?:" + below_one + "|" + _magnitudes(1, hi) + ")"
