"""Write an MoE checkpoint, a dense one of the same total parameter count and one of its active count.

    python tools/make_moe_dense_pair.py outputs/checkpoints/pair-h512 --hidden-size 512 --layers 4 --expert-size 256 --top-k 2
    python -m moeframe.run -m model.path=outputs/checkpoints/pair-h512/moe,outputs/checkpoints/pair-h512/dense

The MoE side is an OLMoE-family model (E experts of width I, top-k); the
dense side is a Llama-family model with one MLP of width E*I and the same
attention, vocabulary and depth, so their total parameters differ only by
the router gates and OLMoE's q/k norms (printed). Per token the MoE runs
k*I of the E*I MLP width: the setting of the "same total size" comparisons
in the Switch Transformer and Mixtral papers. The third, ``dense-active``,
has an MLP k*I wide: the dense model that does the MoE's per-token work
(the "same active size" comparison).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import transformers

from moeframe.model.checkpoint_maker import make_checkpoint


def pair_configs(args: argparse.Namespace) -> dict[str, transformers.PretrainedConfig]:
    common = dict(
        vocab_size=args.vocab_size, hidden_size=args.hidden_size, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=1024,
        tie_word_embeddings=False, rope_theta=1e4, rms_norm_eps=1e-5, bos_token_id=0, eos_token_id=0, pad_token_id=0,
    )
    moe = transformers.OlmoeConfig(
        **common, intermediate_size=args.expert_size, num_experts=args.experts, num_experts_per_tok=args.top_k,
        norm_topk_prob=False,
    )
    dense = transformers.LlamaConfig(**common, intermediate_size=args.experts * args.expert_size)
    active = transformers.LlamaConfig(**common, intermediate_size=args.top_k * args.expert_size)
    return {"moe": moe, "dense": dense, "dense-active": active}


def parameter_count(folder: Path) -> int:
    from safetensors import safe_open

    total = 0
    for shard in folder.glob("*.safetensors"):
        with safe_open(str(shard), "pt") as tensors:
            total += sum(math.prod(tensors.get_slice(name).get_shape()) for name in tensors.keys())
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--expert-size", type=int, default=48, help="each expert's intermediate width I")
    parser.add_argument("--top-k", type=int, default=4)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for name, config in pair_configs(args).items():
        folder = make_checkpoint(config, args.out_dir / name, seed=args.seed)
        print(f"{name}: {folder}  {parameter_count(folder):,} parameters")


if __name__ == "__main__":
    main()
