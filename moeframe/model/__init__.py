"""Models: HF checkpoint folders -> our modules (shared layers, per-family specs), presets and the checkpoint maker."""
