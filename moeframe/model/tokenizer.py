"""A byte-level BPE tokenizer trained here: on the shipped sample text, or on a training corpus.

Tiny checkpoints need a real tokenizer of an exact vocabulary size, and no hub
download is possible, so one is trained in-process with the `tokenizers`
library, the way GPT-2 and Qwen2 tokenizers are built (byte-level BPE, no
unknown token). `<|endoftext|>` is id 0 and serves as bos, eos and pad;
`<|im_start|>` / `<|im_end|>` give a ChatML chat template (Qwen's format).

Real vocabularies (32k to 152k ids) are more than the sample text has merges
for (about 10.8k), so ``vocab_matched_tokenizer`` trains what the text
supports and fills the rest of the ids with byte strings no merge produces,
the way Qwen pads its embedding past its tokenizer, but here every id decodes.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moeframe.data import sample_text

EOS_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (EOS_TOKEN, IM_START, IM_END)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)
# Merges trained for a large vocabulary: well under what the sample text yields, so every tokenizers version reaches it.
BPE_TRAINED_MAX = 8192

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def train_bpe(texts: Iterator[str] | list[str], vocab_size: int) -> Tokenizer:
    """A byte-level BPE of at most ``vocab_size`` tokens trained on ``texts``, with moeframe's special tokens."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size must be at least {MIN_VOCAB_SIZE} (256 bytes + special tokens), got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return tokenizer


@lru_cache(maxsize=None)
def _trained(vocab_size: int) -> str:
    tokenizer = train_bpe(sample_text().split("\n\n"), vocab_size)
    got = tokenizer.get_vocab_size()
    if got != vocab_size:
        raise ValueError(f"the sample text yields {got} BPE tokens, not the {vocab_size} asked for")
    return tokenizer.to_str()


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """A byte-level BPE of exactly ``vocab_size`` tokens on the sample text; trained once per size per process."""
    return Tokenizer.from_str(_trained(vocab_size))


def vocab_matched_tokenizer(vocab_size: int, eos_id: int) -> Tokenizer:
    """Exactly ``vocab_size`` ids with ``<|endoftext|>`` at ``eos_id`` (the config's eos), deterministic.

    Up to ``BPE_TRAINED_MAX`` ids are a trained BPE; the rest are fillers: two-
    then three-character strings of the byte-level alphabet that are not yet
    tokens, in a fixed order. Encoding never yields a filler (no merge makes
    one); decoding one gives its bytes, so any id a random-weight model
    samples decodes. The end-of-text token swaps ids with the token at
    ``eos_id``, so the tokenizer's eos is the model's.
    """
    if not 0 <= eos_id < vocab_size:
        raise ValueError(f"eos id {eos_id} is outside the vocabulary of {vocab_size}")
    data = json.loads(train_tokenizer(min(vocab_size, BPE_TRAINED_MAX)).to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    fillers = (a + b for a in alphabet for b in alphabet)
    fillers3 = (a + b + c for a in alphabet for b in alphabet for c in alphabet)
    for token in itertools.chain(fillers, fillers3):
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(token, len(vocab))
    by_id = {token_id: token for token, token_id in vocab.items()}
    old_eos, displaced = vocab[EOS_TOKEN], by_id[eos_id]
    vocab[EOS_TOKEN], vocab[displaced] = eos_id, old_eos
    for added in data["added_tokens"]:
        added["id"] = vocab[added["content"]]
    return Tokenizer.from_str(json.dumps(data))


def special_token_ids(tokenizer: Tokenizer) -> dict[str, int]:
    return {token: tokenizer.token_to_id(token) for token in SPECIAL_TOKENS}


def save_tokenizer(tokenizer: Tokenizer, out_dir: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json so ``AutoTokenizer.from_pretrained`` loads them."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    added = {
        str(token_id): {
            "content": token,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for token, token_id in special_token_ids(tokenizer).items()
    }
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "added_tokens_decoder": added,
        "bos_token": EOS_TOKEN,
        "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1 << 20,
        "chat_template": CHATML_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
