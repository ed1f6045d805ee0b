"""Regex parser, UTF-8 ranges, number ranges and byte DFA against Python's re and brute force."""

from __future__ import annotations

import random
import re

import pytest
from hypothesis import HealthCheck, given, settings

from constrain_cases import REGEXES
from constrain_helpers import python_matches
from moeframe.constrain.dfa import compile_dfa
from moeframe.constrain.json_regex import DATE, FORMATS, json_string_pattern, schema_to_regex
from moeframe.constrain.number_regex import integer_range, natural_range, number_range
from moeframe.constrain.regex_syntax import normalize, parse_regex
from moeframe.constrain.utf8 import utf8_sequences
from moeframe.errors import RequestError

EXTRA_PATTERNS = [r"a{,3}b", r"x{2,}", r"[^abc]x", r"[\]\-^]+", r"a{x}", r"(?P<n>ab)+", r"[\w.-]+", r"\D\W\S", r"[a-c\d]{2}?"]


def near_misses(seed: int) -> list[str]:
    """Short random strings over an alphabet the suite's patterns use."""
    rng = random.Random(seed)
    alphabet = "ab19-_.@ \n\u00e9\u65e5xyzXYZ(),[]<>/:"
    out = []
    for _ in range(60):
        length = rng.randint(0, 12)
        out.append("".join(rng.choice(alphabet) for _ in range(length)))
    return out


@pytest.mark.parametrize("pattern", REGEXES + EXTRA_PATTERNS)
def test_dfa_agrees_with_python_re(pattern):
    dfa = compile_dfa(parse_regex(pattern))
    compiled = re.compile(pattern, re.ASCII)

    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
    @given(python_matches(compiled))
    def matching(text: str) -> None:
        assert dfa.matches(text.encode("utf-8"))
        for cut in range(len(text)):  # prefixes agree too: a DFA state is exactly a prefix class
            mutated = text[:cut] + "\u00e9" + text[cut + 1 :]
            assert dfa.matches(mutated.encode("utf-8")) == bool(compiled.fullmatch(mutated)), mutated

    matching()
    for text in near_misses(seed=len(pattern)):
        assert dfa.matches(text.encode("utf-8")) == bool(compiled.fullmatch(text)), text


@pytest.mark.parametrize(
    "pattern",
    [r"(?=a)b", r"(a)\1", r"\bword", r"(?i)abc", r"a(?!b)", r"*a", r"a{3,2}", r"(ab", r"ab)", r"[z-a]", r"a**"],
)
def test_unsupported_or_bad_syntax_raises_request_error(pattern):
    with pytest.raises(RequestError):
        parse_regex(pattern)


@pytest.mark.parametrize(("lo", "hi"), [(0, 0x7F), (0x70, 0x900), (0x7FF, 0x800), (0xD000, 0xE100), (0xFFF0, 0x10100), (0x10FF00, 0x10FFFF)])
def test_utf8_sequences_encode_exactly_the_range(lo, hi):
    seqs = [seq for a, b in normalize([(lo, hi)]) for seq in utf8_sequences(a, b)]  # surrogates dropped first
    expected = [chr(c).encode("utf-8") for c in range(lo, hi + 1) if not 0xD800 <= c <= 0xDFFF]
    for data in expected:
        assert any(len(s) == len(data) and all(a <= x <= b for x, (a, b) in zip(data, s)) for s in seqs)
    total = sum(_product(s) for s in seqs)
    assert total == len(expected)


def _product(seq: list[tuple[int, int]]) -> int:
    out = 1
    for a, b in seq:
        out *= b - a + 1
    return out


@pytest.mark.parametrize(("lo", "hi"), [(0, 0), (0, 9), (7, 123), (99, 1000), (5, None), (-120, -3), (-15, 40), (None, -7), (None, None)])
def test_integer_range_matches_exactly_the_integers_in_bounds(lo, hi):
    pattern = re.compile(integer_range(lo, hi))
    for n in range(-1300, 1300):
        inside = (lo is None or n >= lo) and (hi is None or n <= hi)
        assert bool(pattern.fullmatch(str(n))) == inside, n
    for non_canonical in ("-0", "007", "+5", "01"):
        assert not pattern.fullmatch(non_canonical)


@pytest.mark.parametrize(("lo", "hi"), [(-10, 10), (0, 1), (3, 7), (-5, -2), (0, None), (None, 0)])
def test_number_range_matches_exactly_the_decimals_in_bounds(lo, hi):
    pattern = re.compile(number_range(lo, hi))
    rng = random.Random(0)
    samples = [f"{rng.uniform(-12, 12):.{rng.randint(0, 3)}f}" for _ in range(2000)] + ["10.0", "10.5", "-5.0", "-5.01", "1.00", "0.0"]
    for text in samples:
        if re.fullmatch(r"-?(0|[1-9]\d*)(\.\d+)?", text) is None or text.startswith("-0") and float(text) == 0:
            continue
        value = float(text)
        inside = (lo is None or value >= lo) and (hi is None or value <= hi)
        assert bool(pattern.fullmatch(text)) == inside, text


def test_number_range_refuses_fractional_bounds():
    with pytest.raises(RequestError):
        number_range(0.5, 2)


def test_natural_range_counts_every_member_once():
    dfa = compile_dfa(parse_regex(natural_range(37, 4321)))
    members = [n for n in range(0, 10000) if dfa.matches(str(n).encode())]
    assert members == list(range(37, 4322))


def test_date_format_accepts_exactly_the_calendar_dates():
    import datetime

    pattern = re.compile(DATE)
    day = datetime.date(1999, 12, 1)
    for _ in range(900):
        assert pattern.fullmatch(day.isoformat())
        day += datetime.timedelta(days=1)
    for bad in ("2023-02-29", "1900-02-29", "2023-04-31", "0000-01-01", "2023-13-01", "2023-00-10"):
        assert not pattern.fullmatch(bad)
    assert pattern.fullmatch("2000-02-29") and pattern.fullmatch("2024-02-29")


def test_every_format_regex_compiles_with_both_re_and_our_parser():
    for name, pattern in FORMATS.items():
        re.compile(pattern)
        compile_dfa(parse_regex(pattern))


def test_json_string_pattern_escapes_quote_and_backslash():
    pattern = re.compile(json_string_pattern(r'[a"\\]{2}'))
    assert pattern.fullmatch('a\\"') and pattern.fullmatch("\\\\a")
    assert not pattern.fullmatch('a"')


def test_optional_members_get_commas_only_between_present_ones():
    schema = {"type": "object", "properties": {k: {"type": "integer", "minimum": 0, "maximum": 9} for k in "abc"}, "required": ["b"]}
    pattern = re.compile(schema_to_regex(schema))
    for text in ('{"b":1}', '{"a":1,"b":2}', '{"b":1,"c":2}', '{"a":0,"b":1,"c":2}'):
        assert pattern.fullmatch(text), text
    for text in ('{}', '{"a":1}', '{,"b":1}', '{"b":1,}', '{"b":1,"a":2}'):
        assert not pattern.fullmatch(text), text


def test_max_whitespace_allows_that_many_blanks_around_punctuation():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    assert re.fullmatch(schema_to_regex(schema, max_whitespace=2), '{ "a" :  1 }')
    assert not re.fullmatch(schema_to_regex(schema, max_whitespace=2), '{   "a":1}')
    assert not re.fullmatch(schema_to_regex(schema), '{ "a":1}')
