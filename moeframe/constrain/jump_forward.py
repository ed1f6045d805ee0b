"""Jump-forward decoding: turning a constraint's forced bytes into tokens to append in one step.

SGLang's compressed FSM (Zheng et al. 2024, "SGLang: Efficient Execution of
Structured Language Model Programs", section 4) notices that a constraint
often admits exactly one continuation for many characters (a JSON key, ``":"``,
a closing brace), and appends that whole string with one extend step instead
of one decode step per token.

The forced string is fixed in bytes, but not in tokens, and BPE would often
have merged it with the text on either side. Two boundaries matter:

- Left boundary (text already generated). SGLang decodes the output so far
  plus the forced string, re-encodes it all, keeps the common token prefix,
  rolls the state back to it and re-prefills the differing tail. That needs
  the KV of the re-tokenised tail recomputed. :func:`retokenize` computes this
  split (kept prefix length, new tail ids) for an engine that wants it; the
  state's ``rollback`` and ``advance`` then re-sync the constraint.
- The default, :func:`encode_forced`, encodes the forced string on its own.
  The jump point is always a token boundary (it is where the generated tokens
  end), and the constraints are checked on bytes, so any spelling of the
  forced bytes is accepted token by token and every KV entry already
  computed stays valid. The cost is a possibly non-canonical split at the
  boundary, which the model then conditions on.
- Right boundary (text not generated yet) cannot be merged: the model picks
  the next token freely after the jump, which may itself be the first
  byte(s) of a longer word.

The forced bytes stop before an incomplete UTF-8 character (a tokenizer
encodes text, not bytes), and if the state sits inside a character the jump
waits for the model to finish it. If the tokenizer does not spell the text
back byte for byte (a normalizer, a SentencePiece prefix space), no jump is
made rather than a wrong one.
"""

from __future__ import annotations

from moeframe.constrain.vocab import TokenVocab


def complete_text(data: bytes) -> str:
    """The longest prefix of ``data`` that decodes as whole UTF-8 characters ('' if it starts mid-character)."""
    for end in range(len(data), max(len(data) - 4, -1), -1):
        try:
            return data[:end].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return ""


def encode_forced(vocab: TokenVocab, forced: bytes) -> list[int]:
    """Token ids spelling the complete characters of ``forced``, or [] if the tokenizer cannot."""
    text = complete_text(forced)
    if not text:
        return []
    ids = vocab.encode(text)
    if vocab.decode(ids) != text.encode("utf-8"):
        return []
    return ids


def retokenize(vocab: TokenVocab, output_ids: list[int], forced: bytes) -> tuple[int, list[int]]:
    """SGLang-style re-tokenisation: (number of ``output_ids`` to keep, ids to append after them).

    The whole output plus the forced characters is decoded and re-encoded; the
    kept prefix is the longest one shared with the old ids.
    """
    text = complete_text(vocab.decode(output_ids) + forced)
    new_ids = vocab.encode(text)
    if vocab.decode(new_ids) != text.encode("utf-8"):
        return len(output_ids), encode_forced(vocab, forced)
    kept = 0
    while kept < min(len(output_ids), len(new_ids)) and output_ids[kept] == new_ids[kept]:
        kept += 1
    return kept, new_ids[kept:]
