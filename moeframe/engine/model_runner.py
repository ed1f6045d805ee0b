"""Runs the model on a scheduled batch: builds the ForwardBatch, picks the attention kernel, returns logits."""

from __future__ import annotations

import torch

from moeframe.attention import get_attention_backend
from moeframe.attention.batch import ForwardBatch
from moeframe.cache.pool import KVPool
from moeframe.engine.scheduler import ScheduledBatch
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.context import ForwardContext


class ModelRunner:
    def __init__(self, model: CausalLM, pool: KVPool, device: torch.device, attention: str = "auto") -> None:
        self.model, self.pool, self.device = model, pool, device
        self.attend = get_attention_backend(attention, device)

    def make_batch(self, scheduled: ScheduledBatch, all_logits: bool = False) -> ForwardBatch:
        new_tokens, contexts = [], []
        for req, n in zip(scheduled.requests, scheduled.num_new_tokens):
            end = len(req.slots)
            start = end - n
            new_tokens.append(req.all_ids[start:end])
            contexts.append(req.slots[:end])
        return ForwardBatch.build(new_tokens, contexts, self.device, all_logits=all_logits)

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        ctx = ForwardContext(batch=batch, k_cache=self.pool.k, v_cache=self.pool.v, attend=self.attend)
        return self.model(ctx)
