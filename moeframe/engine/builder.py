"""Config -> a ready engine: every component built once, at start, and handed down.

Data flows one way (STYLE.md): this module reads the config; nothing below it
does. The model receives its routers, kernel and parallel strategy through
the MoE factory, the scheduler its policy and cache, the core its constraint
backend.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from moeframe.attention import set_decode_attention_merge, set_decode_attention_prologue, set_decode_kv_splits
from moeframe.cache import CACHES, KVCache, KVPool
from moeframe.config import check_groups, resolve_device, resolve_dtype, validate
from moeframe.errors import ConfigError
from moeframe.engine.model_runner import ModelRunner
from moeframe.engine.policies import SCHEDULERS
from moeframe.engine.pruning import calibrate, calibration_token_ids, check_pruning, prune
from moeframe.engine.scheduler import Scheduler
from moeframe.experts import EXPERTS
from moeframe.experts.auto import kernel_name
from moeframe.gpu.l2_prefetch import set_gemv_tail_prefetch, set_l2_prefetch
from moeframe.gpu.pdl import set_pdl
from moeframe.model.causal_lm import CausalLM
from moeframe.model.layers.batch_invariant import set_batch_invariant
from moeframe.model.layers.fusion import set_compile
from moeframe.model.layers.moe import MoEBlock
from moeframe.model.layers.routes import RouteBuffer
from moeframe.model.layers.small_gemv import set_decode_gemv
from moeframe.model.layers.mla import with_mla_cache
from moeframe.model.loader import assemble_model, load_model, load_spec, random_model
from moeframe.model.spec import AttentionSpec, ModelSpec
from moeframe.parallel import PARALLEL, ParallelStrategy
from moeframe.registry import Registry
from moeframe.routers import ROUTERS, Router
from moeframe.routers.adjust import Adjustments, adjusted
from moeframe.routers.gate_topk import set_fused_norm
from moeframe.routers.replay import ReplayParams, RoutesFile
from moeframe.telemetry.expert_load import ExpertLoadRecorder
from moeframe.telemetry.memory import MemoryMeter

CPU_DEFAULT_SLOTS = 16384


@dataclass
class BuiltEngine:
    cfg: DictConfig
    device: torch.device
    dtype: torch.dtype
    checkpoint: Path | None
    tokenizer_dir: Path | None  # the checkpoint's, or a vocabulary-matched one made for random weights
    spec: ModelSpec
    model: CausalLM
    pool: KVPool
    cache: KVCache
    scheduler: Scheduler
    runner: ModelRunner
    parallel: ParallelStrategy
    recorder: ExpertLoadRecorder | None
    experts_kernel: str  # the registered name of the expert kernel that runs (experts=auto resolved)
    kept_experts: dict[int, list[int]] | None  # routing.prune_experts: the experts each MoE layer kept (else None)
    routes: RouteBuffer | None
    replay_file: RoutesFile | None  # router=replay's routes file, looked up by prompt
    batch_dependent_routing: bool
    max_context: int
    memory: MemoryMeter


def checkpoint_path(cfg: DictConfig) -> Path:
    if cfg.model.path is not None:
        return Path(cfg.model.path)
    from moeframe.model.presets import ensure_checkpoint

    return ensure_checkpoint(cfg.model.preset, cfg.model.cache_dir)


def pool_slots(params: Any, num_layers: int, att: AttentionSpec, dtype: torch.dtype, device: torch.device) -> int:
    """Slots from ``cache.max_tokens``, else a fraction of free GPU memory over a slot's bytes in this rank's layers."""
    if params.max_tokens is not None:
        return params.max_tokens
    if device.type != "cuda":
        return CPU_DEFAULT_SLOTS
    per_slot = KVPool.bytes_per_slot(num_layers, att.cache_kv_heads, att.k_dim, att.v_dim, dtype)
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free * params.mem_fraction) // per_slot)


def model_source(cfg: DictConfig) -> tuple[Path | None, ModelSpec, object]:
    """The checkpoint folder (None for random weights), its spec and its transformers config."""
    if cfg.model.random_weights and cfg.model.path is None:
        from moeframe.model.families import family_of
        from moeframe.model.presets import preset_config

        hf_config = preset_config(cfg.model.preset)
        return None, family_of(hf_config.model_type).parse(hf_config), hf_config
    path = checkpoint_path(cfg)
    spec, hf_config = load_spec(path)
    return path, spec, hf_config


def engine_groups() -> dict[str, Registry]:
    """The config groups the engine builds, by registry (the constraint backends load on first use)."""
    from moeframe.constrain import CONSTRAINTS

    return {
        "router": ROUTERS,
        "cache": CACHES,
        "experts": EXPERTS,
        "parallel": PARALLEL,
        "constraint": CONSTRAINTS,
        "scheduler": SCHEDULERS,
    }


def tokenizer_dir(cfg: DictConfig, path: Path | None) -> Path | None:
    if path is not None:
        return path
    from moeframe.model.presets import ensure_tokenizer

    return ensure_tokenizer(cfg.model.preset, cfg.model.cache_dir)


def replay_file(cfg: DictConfig) -> RoutesFile | None:
    _, params = ROUTERS.parse_params(cfg.router)
    if isinstance(params, ReplayParams) and params.routes_file is not None:
        return RoutesFile(params.routes_file)
    return None


def deterministic_attention(cfg: DictConfig) -> str:
    """The attention of ``deterministic=true`` (one query at a time), after refusing what it cannot keep invariant.

    The mode computes every token on its own (model/layers/batch_invariant.py):
    the reference experts (``experts=auto`` picks them) and attention do, the
    fused kernels' schedules depend on the batch, and so do collectives over
    ranks. Its attention syncs with the host, so decode runs eagerly (no CUDA graphs).
    """
    if cfg.experts.name not in ("auto", "reference"):
        raise ConfigError(f"deterministic=true runs experts=reference (got experts={cfg.experts.name})")
    if cfg.parallel.name != "single":
        raise ConfigError(f"deterministic=true runs parallel=single (got parallel={cfg.parallel.name})")
    if cfg.runner.attention == "triton":
        raise ConfigError("deterministic=true runs the torch attention one query at a time; runner.attention=triton is not invariant")
    return "rows"


def build(cfg: DictConfig, weights: Iterable[tuple[str, torch.Tensor]] | None = None) -> BuiltEngine:
    """Every component from the config; ``weights`` (our names) replaces reading the checkpoint."""
    validate(cfg)
    check_groups(cfg, engine_groups())
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    memory = MemoryMeter(device)
    memory.mark("start")
    torch.manual_seed(cfg.seed)
    attention = deterministic_attention(cfg) if cfg.deterministic else cfg.runner.attention
    set_batch_invariant(cfg.deterministic)
    set_compile(cfg.runner.compile and not cfg.deterministic)
    set_pdl(cfg.runner.pdl)
    set_decode_gemv(cfg.runner.decode_gemv)
    set_fused_norm(cfg.runner.moe_norm_in_router)
    set_decode_kv_splits(cfg.runner.decode_kv_splits)
    set_decode_attention_merge(cfg.runner.decode_attention_merge)
    set_decode_attention_prologue(cfg.runner.decode_attention_prologue)
    set_l2_prefetch(cfg.runner.l2_prefetch)
    set_gemv_tail_prefetch(cfg.runner.gemv_tail_prefetch)
    path, spec, hf_config = model_source(cfg)
    spec = with_mla_cache(spec, cfg.runner.mla_cache)
    if cfg.deterministic and spec.attention.mla is not None:
        raise ConfigError("deterministic=true: multi-latent attention (DeepSeek) is not made batch-invariant yet")
    routing = cfg.routing
    if routing.prune_experts is not None:
        check_pruning(routing.prune_experts, routing.prune_by, spec, cfg.parallel.name)
    try:
        adjustments = Adjustments(routing.temperature, routing.skip_beta, pruned=routing.prune_experts is not None)
    except ValueError as err:
        raise ConfigError(str(err)) from None

    def build_router(layer_idx: int) -> Router:
        router = ROUTERS.build(cfg.router, moe=spec.moe, layer_idx=layer_idx)
        try:
            return adjusted(router, adjustments)
        except ValueError as err:
            raise ConfigError(f"router '{cfg.router.name}': {err}") from None

    # Built here, not inside the model's meta-device construction, so a router's own tensors are real.
    routers = {i: build_router(i) for i, sparse in enumerate(spec.sparse_layers) if sparse} if spec.is_moe else {}
    batch_dependent = any(r.batch_dependent for r in routers.values())
    parallel = PARALLEL.build(
        cfg.parallel, spec=spec, device=device, batch_dependent_routing=batch_dependent, records_routes=cfg.runner.routes
    )
    kernel = EXPERTS.build({"name": "reference"} if cfg.deterministic else cfg.experts, device=device)
    held = [parallel.holds_layer(i) for i in range(spec.num_layers)]
    sparse_here = [i for i, sparse in enumerate(spec.sparse_layers) if sparse and held[i]]
    recorder = ExpertLoadRecorder(
        spec.num_layers, spec.moe.num_experts, spec.moe.top_k, cfg.runner.batched_load_record,
        last_moe_layer=max(sparse_here, default=None),
    ) if spec.is_moe else None  # fmt: skip

    def moe_factory(layer_idx: int) -> MoEBlock:
        router = routers[layer_idx]
        return MoEBlock(
            spec.moe, spec.hidden_size, layer_idx, router, kernel, parallel.expert_runner(layer_idx), recorder
        )

    if weights is not None:
        model = assemble_model(spec, hf_config, weights, moe_factory, dtype, device, "in-memory weights", parallel.shard)
    elif path is None:
        model = random_model(spec, hf_config, moe_factory, dtype, device, cfg.seed, parallel.shard)
    else:
        model = load_model(path, moe_factory, dtype, device, parallel.shard, spec)[0]
    max_context = spec.max_position_embeddings
    if cfg.model.max_context is not None:
        max_context = min(max_context, cfg.model.max_context)
    _, cache_params = CACHES.parse_params(cfg.cache)
    att = parallel.local_attention(spec.attention)
    memory.mark("weights")
    slots = pool_slots(cache_params, sum(held), att, dtype, device)
    pool = KVPool(spec.num_layers, slots, att.cache_kv_heads, att.k_dim, att.v_dim, dtype, device, held)
    memory.mark("kv_pool")
    cache = CACHES.build(cfg.cache, pool=pool)
    policy = SCHEDULERS.build(cfg.scheduler)
    routes = None
    if cfg.runner.routes:
        if not spec.is_moe:
            raise ConfigError("runner.routes: this model has no MoE layers, so no routes to record")
        moe_layers = [i for i, sparse in enumerate(spec.sparse_layers) if sparse]
        step_tokens = max(policy.params.max_batch_tokens, policy.params.max_running, *cfg.runner.cuda_graph_batch_sizes)
        routes = RouteBuffer(moe_layers, step_tokens, device, weights=cfg.runner.routes_weights)
    replays = any(r.replays_routes for r in routers.values())
    runner = ModelRunner(model, pool, device, attention, cfg.runner.overlap, routes, replays, parallel.forward)
    kept_experts = None
    if routing.prune_experts is not None:
        token_ids = calibration_token_ids(path, routing.calibration_text, routing.calibration_tokens)
        scores = calibrate(model, cache, pool, runner.forward, token_ids, routing.prune_by)
        kept_experts = prune(model, scores, routing.prune_experts)
        if recorder is not None:
            recorder.reset()  # the calibration's forwards are not the run's
    # Padding rows would join a batch-dependent router's choice, and a graph cannot take routes to
    # follow step by step, so those run eagerly.
    capturable = not batch_dependent and not replays and parallel.cuda_graph_safe and attention not in ("torch", "rows")
    if device.type == "cuda" and cfg.runner.cuda_graph and capturable:
        runner.capture_cuda_graphs(list(cfg.runner.cuda_graph_batch_sizes), max_context)
    memory.mark("built")
    return BuiltEngine(
        cfg=cfg,
        device=device,
        dtype=dtype,
        checkpoint=path,
        tokenizer_dir=tokenizer_dir(cfg, path),
        spec=spec,
        model=model,
        pool=pool,
        cache=cache,
        scheduler=Scheduler(policy, cache),
        runner=runner,
        parallel=parallel,
        recorder=recorder,
        experts_kernel=kernel_name(kernel),
        kept_experts=kept_experts,
        routes=routes,
        replay_file=replay_file(cfg),
        batch_dependent_routing=batch_dependent,
        max_context=max_context,
        memory=memory,
    )
