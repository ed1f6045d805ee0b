"""DeepSeek-V3's published FP8 layout: block-quantized weights read back to the model's dtype.

DeepSeek-V3/R1 ship their linear weights as float8_e4m3fn with one float32
scale per 128 x 128 block of the weight, stored beside it as
``<name>_scale_inv`` ([ceil(out / 128), ceil(in / 128)]); the weight is
``fp8 * scale_inv`` block by block (the name is the checkpoint's: the tensor
multiplies). config.json says so in ``quantization_config``
(``quant_method: fp8``, ``weight_block_size: [128, 128]``). This module is the
reference path for such a checkpoint: each FP8 weight is multiplied out as it
is read, so the model runs its usual kernels on the dequantized weights
(vLLM and SGLang do the same on GPUs without FP8 support). The same
functions quantize a bf16/float32 checkpoint into that layout
(tools/quantize_fp8.py), so tests can make one without downloading DeepSeek.

The checkpoints also carry ``num_nextn_predict_layers`` multi-token-prediction
layers, stored as decoder layers numbered after the last (``layers.61.*`` in
V3: a full layer plus ``eh_proj``, ``enorm``, ``hnorm``, ``shared_head``).
They only serve speculative decoding, which moeframe does not run yet, so
the loader leaves them out (``is_mtp_tensor``) and says how many tensors it
skipped.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
SCALE_SUFFIX = "_scale_inv"
LAYER_INDEX = re.compile(r"^(?:model\.)?layers\.(\d+)\.")


def block_size(raw_config: dict) -> tuple[int, int] | None:
    """The (rows, cols) weight block of a config.json's FP8 quantization, None when it has none."""
    quant = raw_config.get("quantization_config") or {}
    if quant.get("quant_method") != "fp8":
        return None
    rows, cols = quant.get("weight_block_size") or (128, 128)
    return int(rows), int(cols)


def dequantize_blocks(weight: torch.Tensor, scale_inv: torch.Tensor, block: tuple[int, int]) -> torch.Tensor:
    """float32 ``weight * scale_inv`` with each scale spread over its block (edge blocks cut to the weight)."""
    rows, cols = weight.shape
    expected = (-(-rows // block[0]), -(-cols // block[1]))
    if tuple(scale_inv.shape) != expected:
        raise ValueError(f"scale_inv shape {tuple(scale_inv.shape)} does not tile a {rows}x{cols} weight in {block} blocks")
    scales = scale_inv.float().repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    return weight.float() * scales


def quantize_blocks(weight: torch.Tensor, block: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(fp8 weight, float32 scale_inv): each block scaled so its largest magnitude maps to FP8's largest (448)."""
    rows, cols = weight.shape
    padded = torch.zeros(-(-rows // block[0]) * block[0], -(-cols // block[1]) * block[1], dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    tiles = padded.unflatten(0, (-1, block[0])).unflatten(2, (-1, block[1]))  # [R, br, C, bc]
    amax = tiles.abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    quantized = (tiles / scale_inv[:, None, :, None]).flatten(2).flatten(0, 1)[:rows, :cols]
    return quantized.clamp(-FP8_MAX, FP8_MAX).to(FP8), scale_inv


def is_mtp_tensor(name: str, num_hidden_layers: int) -> bool:
    """A multi-token-prediction layer's tensor: a decoder layer numbered at or after ``num_hidden_layers``."""
    match = LAYER_INDEX.match(name)
    return match is not None and int(match[1]) >= num_hidden_layers


def quantized_name(name: str, tensor: torch.Tensor) -> bool:
    """Whether DeepSeek-V3's layout stores this tensor in FP8: every linear projection's weight (attention, dense
    and expert MLPs, the MTP layer's eh_proj); never embeddings, the lm_head, norms or the router's gate."""
    return tensor.dim() == 2 and name.endswith("_proj.weight")


def mtp_tensors(state: dict[str, torch.Tensor], num_layers: int, num_mtp: int) -> dict[str, torch.Tensor]:
    """Stand-in multi-token-prediction layers in V3's naming: a copy of the last decoder layer, numbered from
    ``num_layers``, with the MTP head's own tensors (its projection of [norm(h); norm(embedding)], their norms, and
    a shared head), so a checkpoint made here has the layout DeepSeek publishes."""
    last = f"model.layers.{num_layers - 1}."
    hidden = state["model.embed_tokens.weight"].shape[1]
    extra: dict[str, torch.Tensor] = {}
    for index in range(num_layers, num_layers + num_mtp):
        prefix = f"model.layers.{index}."
        extra |= {prefix + name[len(last):]: t.clone() for name, t in state.items() if name.startswith(last)}
        extra[prefix + "eh_proj.weight"] = torch.randn(hidden, 2 * hidden) * 0.02
        extra[prefix + "enorm.weight"] = torch.ones(hidden)
        extra[prefix + "hnorm.weight"] = torch.ones(hidden)
        extra[prefix + "shared_head.norm.weight"] = torch.ones(hidden)
        extra[prefix + "shared_head.head.weight"] = state.get("lm_head.weight", state["model.embed_tokens.weight"]).clone()
        extra[prefix + "embed_tokens.weight"] = state["model.embed_tokens.weight"].clone()
    return extra


def quantize_state(state: dict[str, torch.Tensor], block: tuple[int, int]) -> dict[str, torch.Tensor]:
    """A checkpoint's tensors in the FP8 block layout: quantized weights with their ``_scale_inv``, the rest as is."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if quantized_name(name, tensor):
            out[name], out[name + SCALE_SUFFIX] = quantize_blocks(tensor, block)
        else:
            out[name] = tensor
    return out


def quantize_checkpoint(src: Path, dst: Path, block: tuple[int, int] = (128, 128), mtp_layers: int = 1) -> Path:
    """Write checkpoint ``src`` into ``dst`` in the FP8 block layout with ``mtp_layers`` MTP layers; returns ``dst``."""
    config = json.loads((src / "config.json").read_text())
    state: dict = {}
    for file in sorted(src.glob("*.safetensors")):
        state |= load_file(str(file))
    state |= mtp_tensors(state, int(config["num_hidden_layers"]), mtp_layers)
    dst.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in quantize_state(state, block).items()}, str(dst / "model.safetensors"))
    config["num_nextn_predict_layers"] = mtp_layers
    config["quantization_config"] = {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block),
    }  # fmt: skip
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for other in src.iterdir():
        if other.is_file() and other.suffix != ".safetensors" and other.name != "config.json":
            shutil.copy(other, dst / other.name)
    return dst
