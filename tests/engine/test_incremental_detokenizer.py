"""Incremental detokenization equals decoding the whole output, after every append, for any token sequence."""

from __future__ import annotations

import re

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from moeframe.engine.detokenizer import DetokenizeState, IncrementalDetokenizer
from moeframe.model.tokenizer import SPECIAL_TOKENS, train_tokenizer

VOCAB = 4096
SETTINGS = settings(max_examples=150, deadline=None)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(VOCAB)


def byte_level(tokenizer):
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def texts_after_each_chunk(detokenize, ids: list[int], chunks: list[int]) -> list[tuple[str, str]]:
    """(incremental text, full decode) after each append of ``chunks[i]`` tokens (jump-forward appends several)."""
    incremental = IncrementalDetokenizer(detokenize, max_window_tokens=4)
    state, out, pairs = DetokenizeState(), [], []
    pos, chunk = 0, 0
    while pos < len(ids):
        step = chunks[chunk % len(chunks)]
        out.extend(ids[pos : pos + step])
        pos, chunk = pos + step, chunk + 1
        pairs.append((incremental(state, out), detokenize(out)))
    return pairs


# Byte tokens (ids 3..258 in this vocab: the alphabet follows the 3 special tokens) cut UTF-8 characters anywhere.
token_ids = st.one_of(st.integers(0, VOCAB - 1), st.integers(0, 260))
chunk_sizes = st.lists(st.integers(1, 3), min_size=1, max_size=4)


@SETTINGS
@given(ids=st.lists(token_ids, min_size=1, max_size=60), chunks=chunk_sizes)
def test_random_token_ids_decode_like_the_whole_output(tokenizer, ids, chunks):
    for got, want in texts_after_each_chunk(byte_level(tokenizer), ids, chunks):
        assert got == want


@SETTINGS
@given(text=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40), chunks=chunk_sizes)
def test_encoded_unicode_text_decodes_like_the_whole_output(tokenizer, text, chunks):
    assume(not any(token in text for token in SPECIAL_TOKENS))  # those encode to tokens that decode to nothing
    ids = tokenizer.encode(text).ids
    pairs = texts_after_each_chunk(byte_level(tokenizer), ids, chunks)
    assert all(got == want for got, want in pairs)
    assert pairs[-1][0] == text


def test_a_character_split_over_tokens_shows_as_replacement_until_complete(tokenizer):
    ids = tokenizer.encode("a😀").ids
    assert len(ids) >= 3  # the emoji's four bytes span several tokens
    pairs = texts_after_each_chunk(byte_level(tokenizer), ids, [1])
    assert [got for got, _ in pairs][-1] == "a😀"
    assert all(got == want for got, want in pairs)
    assert pairs[1][0].endswith("\ufffd")


@SETTINGS
@given(ids=st.lists(token_ids, min_size=1, max_size=40), chunks=chunk_sizes)
def test_a_decoder_that_strips_the_first_leading_space_needs_the_window_context(tokenizer, ids, chunks):
    """SentencePiece decoders drop the leading space of the first token only: windows keep context for that."""
    decode = byte_level(tokenizer)
    for got, want in texts_after_each_chunk(lambda t: decode(t).removeprefix(" "), ids, chunks):
        assert got == want


def test_special_tokens_are_no_context_for_a_decoder_that_strips_the_first_space(tokenizer):
    """A window whose context decodes to nothing would strip the next token's space; found by hypothesis."""
    decode = byte_level(tokenizer)
    ids = [0] * 8 + [3, 0, tokenizer.token_to_id("Ġt")]
    for got, want in texts_after_each_chunk(lambda t: decode(t).removeprefix(" "), ids, [1]):
        assert got == want


@SETTINGS
@given(words=st.lists(st.sampled_from(["a", " b", " ", ".", " .", ",", "c d", "é"]), min_size=1, max_size=30), chunks=chunk_sizes)
def test_a_decoder_that_rewrites_across_token_edges_falls_back_to_full_decode(tokenizer, words, chunks):
    """transformers' clean_up_tokenization_spaces deletes a space before punctuation that a later token brings."""
    ids = [i for w in words for i in tokenizer.encode(w).ids]
    decode = byte_level(tokenizer)
    for got, want in texts_after_each_chunk(lambda t: re.sub(r" ([.,])", r"\1", decode(t)), ids, chunks):
        assert got == want


def test_each_step_decodes_a_bounded_window(tokenizer):
    decode = byte_level(tokenizer)
    lengths: list[int] = []

    def counting(ids: list[int]) -> str:
        lengths.append(len(ids))
        return decode(ids)

    incremental, state = IncrementalDetokenizer(counting, max_window_tokens=6), DetokenizeState()
    out: list[int] = []
    for token in tokenizer.encode("plain ascii text " * 40).ids:
        out.append(token)
        incremental(state, out)
    assert len(out) > 100 and max(lengths) <= 6
    assert state.text == decode(out)


def test_window_of_fewer_than_two_tokens_is_rejected():
    with pytest.raises(ValueError, match="max_window_tokens"):
        IncrementalDetokenizer(lambda ids: "", max_window_tokens=1)
