"""Mask time per token on the CPU for the constraint backends, with a 32k-vocab byte-level BPE.

    python tools/bench_mask.py [--vocab 32000] [--tokens 300] [--json out.json]

A byte-level BPE of the asked size is trained in-process (the shipped sample
text plus generated JSON and words, so 32k merges exist). For each backend
and constraint, a seeded random model decodes with jump-forward off; the time
of ``fill_bitmask`` (the per-token mask cost the engine pays on the CPU) and
of ``advance`` are recorded per token, plus compile time and the forward steps
jump-forward saves. The fsm backend indexes a DFA state the first time it is
visited, so each case runs twice: cold (first requests) and warm (the same
requests again, every state already indexed).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import zlib

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from moeframe.constrain import CONSTRAINTS, ConstraintSpec, allocate_bitmask, apply_bitmask
from moeframe.constrain.simulate import constrained_generate
from moeframe.model.tokenizer import EOS_TOKEN, sample_text

SMALL_OBJECT = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"],
}
ORDER = {
    "type": "object",
    "properties": {
        "order_identifier": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{6}$"},
        "customer": {
            "type": "object",
            "properties": {"email_address": {"type": "string", "format": "email"}, "is_returning_customer": {"type": "boolean"}},
            "required": ["email_address", "is_returning_customer"],
        },
        "line_items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"sku": {"type": "string", "maxLength": 8}, "quantity": {"type": "integer", "minimum": 1, "maximum": 99}},
                "required": ["sku", "quantity"],
            },
            "minItems": 1,
            "maxItems": 3,
        },
        "shipping_priority": {"enum": ["standard", "express", "overnight"]},
    },
    "required": ["order_identifier", "customer", "line_items", "shipping_priority"],
}
CONSTRAINT_CASES = {
    "small_object_schema": ConstraintSpec(json_schema=SMALL_OBJECT),
    "order_schema": ConstraintSpec(json_schema=ORDER),
    "email_regex": ConstraintSpec(regex=r"[a-z0-9._]+@[a-z0-9]+\.(com|org|net)"),
    "choices": ConstraintSpec(choices=["positive", "negative", "neutral", "mixed feelings"]),
}


def train_bpe(vocab_size: int) -> Tokenizer:
    rng = random.Random(0)
    syllables = [a + b for a in "bcdfghjklmnprstvwz" for b in "aeiouy"] + ["th", "ch", "sh", "ng", "qu", "st"]
    words = [" " + "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400_000)]
    corpus = sample_text().split("\n\n") + ["".join(words[i : i + 50]) for i in range(0, len(words), 50)]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return tokenizer


def random_model(vocab_size: int, lengths: torch.Tensor, seed: int):
    def logits(token_ids: list[int]) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(str((seed, token_ids)).encode()))
        return 2.0 * torch.randn(vocab_size, generator=generator) - lengths

    return logits


def measure(backend, spec: ConstraintSpec, max_tokens: int, eos_id: int, seed: int) -> dict[str, float]:
    start = time.perf_counter()
    compiled = backend.compile(spec)
    compile_ms = (time.perf_counter() - start) * 1e3
    lengths = torch.tensor([max(len(b), 1) for b in backend.vocab.token_bytes], dtype=torch.float32)
    model = random_model(backend.vocab_size, lengths, seed)
    state = backend.new_state(compiled)
    bitmask = allocate_bitmask(1, backend.vocab_size)
    fill_us, advance_us, token_ids = [], [], []
    while len(token_ids) < max_tokens:
        logits = model(token_ids).unsqueeze(0)
        start = time.perf_counter()
        state.fill_bitmask(bitmask, 0)
        fill_us.append((time.perf_counter() - start) * 1e6)
        apply_bitmask(logits, bitmask)
        token = int(torch.argmax(logits[0]))
        start = time.perf_counter()
        state.advance(token)
        advance_us.append((time.perf_counter() - start) * 1e6)
        token_ids.append(token)
        if token == eos_id:
            break
    plain = constrained_generate(backend, spec, model, max_tokens, eos_id, jump_forward=False)
    jumped = constrained_generate(backend, spec, model, max_tokens, eos_id, jump_forward=True)
    return {
        "tokens": len(token_ids),
        "compile_ms": compile_ms,
        "mask_us_median": statistics.median(fill_us),
        "mask_us_mean": statistics.fmean(fill_us),
        "mask_us_first": fill_us[0],
        "advance_us_median": statistics.median(advance_us),
        "steps_no_jump": plain[1],
        "steps_jump": jumped[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = train_bpe(args.vocab)
    eos_id = tokenizer.token_to_id(EOS_TOKEN)
    print(f"byte-level BPE with {tokenizer.get_vocab_size()} tokens; {args.seeds} seeds x up to {args.tokens} tokens; 1 CPU thread")
    results = []
    for name in ("xgrammar", "fsm"):
        start = time.perf_counter()
        backend = CONSTRAINTS.build({"name": name}, tokenizer=tokenizer, vocab_size=args.vocab, eos_token_ids=(eos_id,))
        build_ms = (time.perf_counter() - start) * 1e3
        for case, spec in CONSTRAINT_CASES.items():
            cold = [measure(backend, spec, args.tokens, eos_id, seed) for seed in range(args.seeds)]
            warm = [measure(backend, spec, args.tokens, eos_id, seed) for seed in range(args.seeds)]
            row = {"backend": name, "constraint": case, "build_ms": build_ms, "compile_ms": cold[0]["compile_ms"]}
            for key in cold[0]:
                if key != "compile_ms":
                    row[key] = statistics.fmean(r[key] for r in cold)
            row["warm_mask_us_median"] = statistics.fmean(r["mask_us_median"] for r in warm)
            row["warm_mask_us_mean"] = statistics.fmean(r["mask_us_mean"] for r in warm)
            results.append(row)
    print("cold: first requests of a constraint; warm: the same requests again (fsm's state index cached)")
    print(
        f"{'backend':9} {'constraint':20} {'tokens':>6} {'compile ms':>10} {'cold med us':>11} {'cold mean us':>12} "
        f"{'warm med us':>11} {'warm mean us':>12} {'advance us':>10} {'steps':>6} {'steps jf':>8}"
    )
    for r in results:
        print(
            f"{r['backend']:9} {r['constraint']:20} {r['tokens']:6.0f} {r['compile_ms']:10.1f} {r['mask_us_median']:11.1f} "
            f"{r['mask_us_mean']:12.1f} {r['warm_mask_us_median']:11.1f} {r['warm_mask_us_mean']:12.1f} "
            f"{r['advance_us_median']:10.1f} {r['steps_no_jump']:6.0f} {r['steps_jump']:8.0f}"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
