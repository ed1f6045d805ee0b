"""Train an HF-format MoE checkpoint here (moeframe.training), or write the shipped corpus.

    python tools/train_moe.py --recipe trained-tiny-olmoe --out DIR [--device cpu|cuda] [--set steps=500 model.hidden_size=64 ...]
    python tools/train_moe.py --recipe trained-olmoe-small --device cuda --time-limit-s 300   # --out defaults to the preset's folder
    python tools/train_moe.py --write-corpus moeframe/data/corpus/stdlib.jsonl.xz

A run interrupted mid-way resumes from DIR/train_state when started again
with the same arguments (--no-resume starts over). Recipes are listed in
moeframe/training/recipes.py; the written folder loads with
``model.path=DIR`` or, at the preset's own folder, with ``model=NAME``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from moeframe.training.corpus import interpreter_roots, read_sources, sample_by_hash, write_jsonl_xz
from moeframe.training.recipes import RECIPES, get_recipe
from moeframe.training.trainer import train

SHIPPED_CORPUS_CHARS = 6_000_000


def print_evaluations(row: dict) -> None:
    """One line per held-out evaluation, so a log without the progress bar still shows the run advancing."""
    if "heldout_loss" in row:
        print(
            f"step {row['step']}: train LM loss {row['lm_loss']:.4f}, aux {row['aux_loss']:.4f}, held-out perplexity "
            f"{row['heldout_perplexity']:.2f}, accuracy {row['heldout_accuracy']:.4f} ({row['elapsed_s']:.0f} s)",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", choices=sorted(RECIPES), default="trained-tiny-olmoe")
    parser.add_argument("--out", type=Path, help="checkpoint folder (default: the preset's own folder)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides; model.KEY sets a config value")
    parser.add_argument("--no-resume", action="store_true")
    parser.add_argument("--time-limit-s", type=float, help="stop training after this many seconds (the card says so)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--write-corpus", type=Path, help="write the shipped corpus from this interpreter's stdlib and exit")
    args = parser.parse_args()
    if args.write_corpus is not None:
        docs = sample_by_hash(read_sources(interpreter_roots(site_packages=False)), SHIPPED_CORPUS_CHARS)
        write_jsonl_xz(docs, args.write_corpus)
        print(f"wrote {len(docs)} files ({sum(len(d.text) for d in docs):,} chars) to {args.write_corpus}")
        return
    recipe = get_recipe(args.recipe).with_overrides(args.set)
    out = args.out
    if out is None:
        from moeframe.model.presets import trained_checkpoint_dir

        out = trained_checkpoint_dir(args.recipe)
    command = "python tools/train_moe.py " + shlex.join(sys.argv[1:])
    result = train(
        recipe, out, device=args.device, resume=not args.no_resume, time_limit_s=args.time_limit_s,
        progress=not args.no_progress, name=args.recipe, command=command, on_log=print_evaluations,
    )  # fmt: skip
    final = result.final
    print(
        f"{args.recipe}: {result.steps_done} steps{' (time limit)' if result.stopped_early else ''}; held-out perplexity "
        f"{final['heldout_perplexity']:.2f}, next-token accuracy {final['heldout_accuracy']:.4f}; wrote {out}"
    )


if __name__ == "__main__":
    main()
