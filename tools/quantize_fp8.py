"""Write an HF checkpoint in DeepSeek-V3's published FP8 layout (block-quantized weights, MTP layers).

    python tools/quantize_fp8.py SRC_DIR DST_DIR [--mtp-layers 1] [--block 128 128]

SRC_DIR is any checkpoint folder moeframe loads (e.g. the tiny-deepseek-v3 preset's); DST_DIR gets its
config.json with ``quantization_config`` (fp8, e4m3, dynamic activations, the weight block) and
``num_nextn_predict_layers``, one safetensors file, and the tokenizer files. See moeframe/model/fp8_checkpoint.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from moeframe.model.fp8_checkpoint import quantize_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--mtp-layers", type=int, default=1)
    parser.add_argument("--block", type=int, nargs=2, default=(128, 128))
    args = parser.parse_args()
    print(quantize_checkpoint(args.src, args.dst, tuple(args.block), args.mtp_layers))


if __name__ == "__main__":
    main()
