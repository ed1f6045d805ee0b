"""DeepSeek-V3's FP8 layout: block quantization within FP8's rounding, and a quantized tiny DeepSeek checkpoint
(MTP layer included) loading through the normal loader with the logits of transformers on its dequantized weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from moeframe import Engine
from moeframe.model.fp8_checkpoint import (
    FP8,
    FP8_MAX,
    SCALE_SUFFIX,
    dequantize_blocks,
    is_mtp_tensor,
    quantize_blocks,
    quantize_checkpoint,
)

# e4m3 keeps 3 mantissa bits: rounding to nearest errs by at most 2^-4 of a normal value, and by half the
# smallest subnormal step (2^-10 after scaling) below FP8's smallest normal, 2^-6
FP8_RELATIVE_ROUNDING = 2.0**-4
FP8_SUBNORMAL_HALF_STEP = 2.0**-10


@pytest.mark.parametrize(("rows", "cols", "block"), [(300, 260, (128, 128)), (64, 32, (128, 128)), (40, 50, (16, 8))])
def test_each_block_maps_its_largest_magnitude_to_448_and_rounds_within_fp8s_precision(rows, cols, block) -> None:
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(rows)) * torch.linspace(0.01, 3, cols)
    quantized, scale_inv = quantize_blocks(weight, block)
    assert quantized.dtype == FP8 and scale_inv.dtype == torch.float32
    assert tuple(scale_inv.shape) == (-(-rows // block[0]), -(-cols // block[1]))
    for i in range(scale_inv.shape[0]):
        for j in range(scale_inv.shape[1]):
            tile = weight[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]]
            assert scale_inv[i, j] == tile.abs().max() / FP8_MAX
            assert quantized[i * block[0] : (i + 1) * block[0], j * block[1] : (j + 1) * block[1]].float().abs().max() == FP8_MAX
    scales = scale_inv.repeat_interleave(block[0], 0)[:rows].repeat_interleave(block[1], 1)[:, :cols]
    error = (dequantize_blocks(quantized, scale_inv, block) - weight).abs()
    assert (error <= torch.maximum(weight.abs() * FP8_RELATIVE_ROUNDING, scales * FP8_SUBNORMAL_HALF_STEP)).all()


def test_scales_that_do_not_tile_the_weight_are_refused() -> None:
    quantized, scale_inv = quantize_blocks(torch.randn(130, 10), (128, 128))
    with pytest.raises(ValueError, match="does not tile"):
        dequantize_blocks(quantized, scale_inv[:1], (128, 128))


def test_only_layers_numbered_after_the_last_are_mtp() -> None:
    assert is_mtp_tensor("model.layers.3.eh_proj.weight", 3)
    assert is_mtp_tensor("layers.4.mlp.experts.0.up_proj.weight", 3)
    assert not is_mtp_tensor("model.layers.2.mlp.gate.weight", 3)
    assert not is_mtp_tensor("model.embed_tokens.weight", 3)


@pytest.fixture(scope="module")
def fp8_checkpoint(checkpoint_factory, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(bf16/float32 original, FP8 layout with one MTP layer, the FP8 weights dequantized in the original layout)."""
    original = checkpoint_factory("tiny-deepseek-v3")
    root = tmp_path_factory.mktemp("fp8")
    fp8 = quantize_checkpoint(original, root / "fp8", mtp_layers=1)
    dequantized = root / "dequantized"
    dequantized.mkdir()
    config = json.loads((original / "config.json").read_text())
    state = load_file(str(fp8 / "model.safetensors"))
    plain = {
        name: dequantize_blocks(t, state[name + SCALE_SUFFIX], (128, 128)) if t.dtype == FP8 else t
        for name, t in state.items()
        if not name.endswith(SCALE_SUFFIX) and not is_mtp_tensor(name, config["num_hidden_layers"])
    }
    save_file(plain, str(dequantized / "model.safetensors"))
    (dequantized / "config.json").write_text(json.dumps(config))
    return original, fp8, dequantized


def test_the_checkpoint_has_deepseeks_published_layout(fp8_checkpoint) -> None:
    _, fp8, _ = fp8_checkpoint
    config = json.loads((fp8 / "config.json").read_text())
    state = load_file(str(fp8 / "model.safetensors"))
    mtp = config["num_hidden_layers"]
    assert config["quantization_config"] == {
        "activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": [128, 128],
    }  # fmt: skip
    assert config["num_nextn_predict_layers"] == 1
    assert state["model.layers.1.mlp.experts.0.gate_proj.weight"].dtype == FP8
    assert state["model.layers.1.self_attn.kv_b_proj.weight_scale_inv"].dtype == torch.float32
    assert state["model.layers.1.mlp.gate.weight"].dtype != FP8  # the router stays in high precision
    assert {f"model.layers.{mtp}.{n}.weight" for n in ("eh_proj", "enorm", "hnorm", "shared_head.head")} <= set(state)


def fp8_engine(path: Path) -> Engine:
    return Engine.from_overrides([f"model.path={path}", "device=cpu", "dtype=float32", "cache=none"])


def test_the_fp8_checkpoint_loads_with_the_logits_of_transformers_on_its_dequantized_weights(fp8_checkpoint) -> None:
    from transformers import AutoModelForCausalLM

    _, fp8, dequantized = fp8_checkpoint
    with pytest.warns(UserWarning, match="multi-token-prediction"):
        engine = fp8_engine(fp8)
    ids = torch.randint(1, engine.spec.vocab_size, (19,), generator=torch.Generator().manual_seed(0)).tolist()

    def reference(path: Path) -> torch.Tensor:
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32, attn_implementation="eager")
        with torch.no_grad():
            return model.eval()(torch.tensor([ids])).logits[0]

    # FP8's error lives in the weights (bounded per element above); loading adds none: float32 agreement
    expected = reference(dequantized)
    assert torch.linalg.norm(engine.score(ids) - expected) / torch.linalg.norm(expected) < 1e-4
