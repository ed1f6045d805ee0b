"""The decode roofline's byte count against the tensors a step reads, counted one parameter at a time."""

from __future__ import annotations

import pytest

from moeframe import Engine
from moeframe.api import compose_config
from moeframe.telemetry import roofline

ELEMENT_SIZE = 2


def bytes_read_by_one_token(engine: Engine, context: int) -> int:
    """Batch 1: one embedding row, every other dense weight whole (the lm_head too when tied), k experts a layer, the KV."""
    model, spec = engine.built.model, engine.spec
    params = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if name == "embed_tokens.weight":
            params += spec.hidden_size
        elif name.endswith((".w13", ".w2")):
            params += spec.moe.top_k * p[0].numel()
        else:
            params += p.numel()
    att = spec.attention
    kv = context * spec.num_layers * att.cache_kv_heads * (att.k_dim + att.v_dim)
    return (params + kv) * ELEMENT_SIZE


@pytest.mark.parametrize("preset", ["tiny-olmoe", "tiny-qwen2"])
def test_a_decode_step_reads_one_embedding_row_not_the_table(preset: str) -> None:
    cfg = compose_config([f"model={preset}", "model.random_weights=true", "device=cpu", "dtype=float32"])
    engine = Engine(cfg)
    sizes = roofline.model_bytes(engine.built.model, ELEMENT_SIZE)
    assert roofline.decode_step_bytes(engine.spec, sizes, 1, 37) == bytes_read_by_one_token(engine, 37)
