"""Attention's one qkv_proj: loaded from separate HF q/k/v tensors, split back exactly, and sharded by heads."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from moeframe import Engine
from moeframe.api import compose_config
from moeframe.errors import CheckpointError
from moeframe.model.families import family_of
from moeframe.model.layers.attention import Attention, qkv_widths
from moeframe.model.layers.rotary import Rotary
from moeframe.model.loader import fuse_qkv, hf_state_tensors
from moeframe.model.presets import make_config, preset_config
from moeframe.model.spec import AttentionSpec, RopeSpec
from moeframe.parallel.comm import Comm
from moeframe.parallel.slicing import WeightSlicer
from moeframe.parallel.tp_layers import local_attention_spec, shard_attention
from moeframe.telemetry.roofline import model_bytes

FUSED = {"layers.0.self_attn.qkv_proj.weight", "layers.0.self_attn.qkv_proj.bias"}


def qwen2_moe_spec():
    return family_of("qwen2_moe").parse(make_config("qwen2_moe"))


def separate_projections(spec) -> dict[str, nn.Linear]:
    torch.manual_seed(0)
    q_out, kv_out = qkv_widths(spec.attention)
    return {p: nn.Linear(spec.hidden_size, w, bias=True) for p, w in (("q", q_out), ("k", kv_out), ("v", kv_out))}


def checkpoint_tensors(projections: dict[str, nn.Linear], parts: str = "qkv") -> list[tuple[str, torch.Tensor]]:
    return [
        (f"layers.0.self_attn.{p}_proj.{leaf}", getattr(projections[p], leaf).data)
        for p in parts
        for leaf in ("weight", "bias")
    ]


def attention(num_heads: int, num_kv_heads: int, head_dim: int = 3, hidden: int = 10) -> Attention:
    torch.manual_seed(0)
    spec = AttentionSpec(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim, qkv_bias=True)
    attn = Attention(spec, hidden, 1e-6, Rotary(RopeSpec(theta=1e4, rotary_dim=head_dim)), 0)
    nn.init.normal_(attn.qkv_proj.bias)
    return attn


def split_qkv(attn: Attention, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    q_out, kv_out = qkv_widths(attn.spec)
    return attn.qkv_proj(x).split([q_out, kv_out, kv_out], dim=-1)


def test_fused_projection_split_equals_the_separate_q_k_v_projections() -> None:
    spec = qwen2_moe_spec()
    projections = separate_projections(spec)
    fused = dict(fuse_qkv(spec, checkpoint_tensors(projections), FUSED))
    assert set(fused) == FUSED
    qkv = nn.Linear(spec.hidden_size, fused["layers.0.self_attn.qkv_proj.weight"].shape[0])
    qkv.weight.data, qkv.bias.data = fused["layers.0.self_attn.qkv_proj.weight"], fused["layers.0.self_attn.qkv_proj.bias"]
    x = torch.randn(5, spec.hidden_size)
    q_out, kv_out = qkv_widths(spec.attention)
    for got, p in zip(qkv(x).split([q_out, kv_out, kv_out], dim=-1), "qkv"):
        torch.testing.assert_close(got, projections[p](x))


def test_projections_the_model_does_not_fuse_pass_through_unchanged() -> None:
    spec = qwen2_moe_spec()
    tensors = checkpoint_tensors(separate_projections(spec), parts="q")
    assert list(fuse_qkv(spec, tensors, expected=set())) == tensors


def test_a_missing_part_of_q_k_v_is_named() -> None:
    spec = qwen2_moe_spec()
    tensors = checkpoint_tensors(separate_projections(spec), parts="qv")
    with pytest.raises(CheckpointError, match=r"missing .*layers\.0\.self_attn\.k_proj\.weight"):
        list(fuse_qkv(spec, tensors, FUSED))


def test_a_part_of_the_wrong_shape_is_named() -> None:
    spec = qwen2_moe_spec()
    tensors = checkpoint_tensors(separate_projections(spec))
    tensors[2] = (tensors[2][0], tensors[2][1][1:])
    with pytest.raises(CheckpointError, match=r"k_proj\.weight has shape"):
        list(fuse_qkv(spec, tensors, FUSED))


@pytest.mark.parametrize("num_heads,num_kv_heads,world", [(4, 2, 2), (4, 1, 2), (6, 3, 3), (4, 2, 4)])
def test_tensor_parallel_shard_computes_its_q_then_k_then_v_heads(num_heads: int, num_kv_heads: int, world: int) -> None:
    full = attention(num_heads, num_kv_heads)
    x = torch.randn(5, 10)
    d = full.spec.head_dim
    q, k, v = (t.unflatten(-1, (-1, d)) for t in split_qkv(full, x))
    for rank in range(world):
        shard = copy.deepcopy(full)
        shard_attention(shard, world, rank, Comm())
        assert shard.spec == local_attention_spec(full.spec, world)
        q_heads = range(rank * num_heads // world, (rank + 1) * num_heads // world)
        kv_heads = sorted({h * num_kv_heads // num_heads for h in q_heads})  # the KV heads its q heads read
        local_q, local_k, local_v = (t.unflatten(-1, (-1, d)) for t in split_qkv(shard, x))
        torch.testing.assert_close(local_q, q[:, q_heads.start : q_heads.stop])
        torch.testing.assert_close(local_k, k[:, kv_heads])
        torch.testing.assert_close(local_v, v[:, kv_heads])


def test_slicer_recorded_on_the_meta_model_cuts_the_full_fused_tensor_like_sharding_it() -> None:
    full = attention(4, 2)
    with torch.device("meta"):
        meta = attention(4, 2)
    shard_attention(meta, 2, 1, Comm())
    real = copy.deepcopy(full)
    shard_attention(real, 2, 1, Comm())
    slicer = WeightSlicer.of(meta)
    for leaf in ("weight", "bias"):
        name = f"qkv_proj.{leaf}"
        torch.testing.assert_close(slicer(name, full.state_dict()[name]), dict(real.named_parameters())[name].data)


def test_loaded_checkpoint_fuses_its_hub_q_k_v_tensors_in_order(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-qwen2-moe")
    files = load_file(str(path / "model.safetensors"))
    engine = Engine(compose_config([f"model.path={path}", "device=cpu", "dtype=float32"]))
    attn = engine.built.model.layers[1].self_attn
    for leaf in ("weight", "bias"):
        hub = [files[f"model.layers.1.self_attn.{p}_proj.{leaf}"] for p in "qkv"]
        torch.testing.assert_close(getattr(attn.qkv_proj, leaf).data, torch.cat(hub))


def test_in_memory_transformers_weights_load_and_keep_the_roofline_byte_count() -> None:
    hf_config = preset_config("tiny-olmoe")
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32).eval()
    cfg = compose_config(["model=tiny-olmoe", "model.random_weights=true", "device=cpu", "dtype=float32"])
    spec = family_of(hf_config.model_type).parse(hf_config)
    engine = Engine(cfg, weights=hf_state_tensors(spec, hf.state_dict()))
    hf_dense = sum(t.numel() for n, t in hf.state_dict().items() if ".mlp.experts." not in n)
    assert model_bytes(engine.built.model, 2).dense_params == hf_dense
