"""Block sizes for the fused-MoE kernels: tuned tables shipped as JSON, and a heuristic default.

As in vLLM's fused_moe, one JSON file per (expert count, expert width, hidden
size, device, dtype) maps a token count to the best configuration that
``tools/tune_moe.py`` measured; a forward picks the entry of the nearest token
count. Unlike vLLM, the gate/up and down kernels get their own tile shapes
(they multiply differently shaped matrices) and share only ``block_m``, the
row padding of the expert alignment.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path

import torch

CONFIG_DIR = Path(__file__).parent / "configs"


@dataclass(frozen=True)
class TileConfig:
    block_n: int
    block_k: int
    group_m: int = 1
    num_warps: int = 4
    num_stages: int = 3


@dataclass(frozen=True)
class MoEConfig:
    block_m: int
    gate_up: TileConfig
    down: TileConfig

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(raw: dict) -> "MoEConfig":
        return MoEConfig(raw["block_m"], TileConfig(**raw["gate_up"]), TileConfig(**raw["down"]))


@lru_cache(maxsize=None)
def device_name(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    return torch.cuda.get_device_name(device).replace(" ", "_")


def config_file_name(num_experts: int, inter: int, hidden: int, device: str, dtype: torch.dtype) -> str:
    return f"E={num_experts},I={inter},H={hidden},device={device},dtype={str(dtype).removeprefix('torch.')}.json"


@lru_cache(maxsize=None)
def load_tuned(num_experts: int, inter: int, hidden: int, device: str, dtype: torch.dtype) -> dict[int, MoEConfig] | None:
    path = CONFIG_DIR / config_file_name(num_experts, inter, hidden, device, dtype)
    if not path.is_file():
        return None
    table = json.loads(path.read_text())
    return {int(tokens): MoEConfig.from_json(cfg) for tokens, cfg in table.items()}


def default_config(num_tokens: int, top_k: int, num_experts: int) -> MoEConfig:
    """Tile shapes by rows per expert: weight-streaming GEMV at decode, large MMA tiles at prefill."""
    rows_per_expert = num_tokens * top_k / num_experts
    if rows_per_expert <= 4:
        return MoEConfig(16, TileConfig(64, 128, 1, 4, 4), TileConfig(64, 128, 1, 4, 4))
    if rows_per_expert <= 32:
        return MoEConfig(32, TileConfig(64, 128, 1, 4, 3), TileConfig(64, 128, 1, 4, 3))
    if rows_per_expert <= 128:
        return MoEConfig(64, TileConfig(64, 64, 8, 4, 4), TileConfig(64, 64, 8, 4, 4))
    return MoEConfig(128, TileConfig(64, 64, 8, 8, 3), TileConfig(128, 64, 8, 8, 4))


def pick_config(
    num_tokens: int, top_k: int, num_experts: int, inter: int, hidden: int, device: torch.device, dtype: torch.dtype, use_tuned: bool
) -> MoEConfig:
    table = load_tuned(num_experts, inter, hidden, device_name(device), dtype) if use_tuned else None
    if not table:
        return default_config(num_tokens, top_k, num_experts)
    nearest = min(table, key=lambda tokens: abs(tokens - num_tokens))
    return table[nearest]
