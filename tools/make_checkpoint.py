"""Write a preset's random-weight checkpoint (or, for a real-shape preset, its config.json).

    python tools/make_checkpoint.py tiny-deepseek-v3 /tmp/ds --seed 1
    python tools/make_checkpoint.py mixtral-8x7b /tmp/mixtral   # config.json only
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from moeframe.model.checkpoint_maker import hub_config_dict, make_checkpoint
from moeframe.model.presets import PRESETS, get_preset, preset_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", help=f"one of: {', '.join(sorted(PRESETS))}")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    config = preset_config(args.preset)
    if preset.config_only:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "config.json").write_text(json.dumps(hub_config_dict(config), indent=2, sort_keys=True) + "\n")
        print(f"{args.preset} is config-only: wrote {args.out_dir / 'config.json'}")
        return
    make_checkpoint(config, args.out_dir, seed=args.seed, tokenizer_vocab_size=preset.tokenizer_vocab_size)
    print(f"wrote {args.preset} (seed {args.seed}) to {args.out_dir}")


if __name__ == "__main__":
    main()
