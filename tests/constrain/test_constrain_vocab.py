"""Token bytes: every token spells exactly what the tokenizer decodes; special and padding ids spell nothing."""

from __future__ import annotations

from hypothesis import assume, given, settings
from hypothesis import strategies as st
from tokenizers import AddedToken, Tokenizer
from transformers import PreTrainedTokenizerFast

from moeframe.constrain.vocab import TokenVocab, piece_decoder
from moeframe.model.tokenizer import SPECIAL_TOKENS


@settings(max_examples=50, deadline=None)
@given(st.text(max_size=40))
def test_token_bytes_concatenate_to_the_encoded_text(backend, text):
    # a special token's text encodes to that token, which spells nothing (the next test)
    assume(not any(token in text for token in SPECIAL_TOKENS))
    ids = backend.vocab.encode(text)
    assert backend.vocab.decode(ids) == text.encode("utf-8")


def test_special_tokens_and_padding_rows_have_no_bytes(backend, tokenizer):
    for token in SPECIAL_TOKENS:
        assert backend.vocab.token_bytes[tokenizer.token_to_id(token)] == b""
    assert all(b == b"" for b in backend.vocab.token_bytes[tokenizer.get_vocab_size() :])


def test_every_single_byte_is_a_token(backend):
    assert {bytes([b]) for b in range(256)} <= set(backend.vocab.token_bytes)


def test_hugging_face_wrapper_gives_the_same_vocab(tokenizer, backend):
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer)
    assert TokenVocab.from_tokenizer(wrapped, backend.vocab_size).token_bytes == backend.vocab.token_bytes


def test_sentencepiece_pieces_map_to_bytes():
    to_bytes = piece_decoder({"decoder": {"type": "Sequence", "decoders": [{"type": "Replace"}, {"type": "ByteFallback"}]}})
    assert to_bytes("\u2581the") == b" the"
    assert to_bytes("<0x0A>") == b"\n"
    assert to_bytes("\u00e9") == "\u00e9".encode()


def test_a_non_special_added_token_spells_its_text(tokenizer):
    """Qwen's ``<tool_call>`` is an added token that is not special: the detokenizer keeps it, so it has bytes."""
    extended = Tokenizer.from_str(tokenizer.to_str())
    extended.add_tokens([AddedToken("<tool_call>", special=False)])
    extended.add_special_tokens([AddedToken("<|secret|>", special=True)])
    vocab = TokenVocab.from_tokenizer(extended, extended.get_vocab_size() + 4)
    assert vocab.token_bytes[extended.token_to_id("<tool_call>")] == b"<tool_call>"
    assert vocab.token_bytes[extended.token_to_id("<|secret|>")] == b""
    assert vocab.encode("a<tool_call>b") == [*vocab.encode("a"), extended.token_to_id("<tool_call>"), *vocab.encode("b")]
