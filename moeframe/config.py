"""The run's structured config: fixed sections as dataclasses, component groups as ``{name, **params}``.

Fixed sections (model, runner, server, top-level device/dtype/seed) are typed
here and checked by Hydra's ConfigStore; each component group is checked by
its registry against the chosen component's own params dataclass
(``Registry.parse_params``). The engine builder checks its groups, run.py the
workload and logger, both before anything heavy is built, so a bad sweep fails
in its first second. This module imports no component package.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from moeframe.errors import ConfigError
from moeframe.gpu.triton_mode import triton_unavailable
from moeframe.registry import Registry

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class ModelConfig:
    preset: str | None = "trained-tiny-olmoe"  # a name from moeframe.model.presets (trained ones ship, tiny random ones are made on first use)
    path: str | None = None  # an HF checkpoint folder; wins over preset
    cache_dir: str | None = None  # where presets are written (default $MOEFRAME_CACHE or ~/.cache/moeframe)
    max_context: int | None = None  # cap on the checkpoint's context length
    random_weights: bool = False  # real-shape presets: random weights made on the device, no files


@dataclass
class RunnerConfig:
    attention: str = "auto"  # auto | torch | triton
    cuda_graph: bool = True  # capture decode steps on CUDA
    compile: bool = True  # fuse elementwise regions (norms, rotary) with torch.compile on CUDA
    pdl: bool = True  # programmatic dependent launch of the Triton kernels on sm_90+ (moeframe/gpu/pdl.py)
    decode_gemv: str = "prefetch"  # prefetch | cublas | triton | fused: decode-sized projections on CUDA (model/layers/small_gemv.py)
    moe_norm_in_router: bool = True  # the residual add + RMSNorm before an MoE block inside the gate top-k launch (routers/gate_topk.py)
    decode_kv_splits: int = 0  # chunks of each context in the Triton decode attention (0: by batch size and SMs)
    decode_attention_merge: str = "fused"  # fused | separate: the decode attention's split merge in the split launch or its own
    decode_attention_prologue: str = "fused"  # fused | separate: q/k norm, rotary and the KV write in the decode attention's split launch or their own (attention/triton_decode.py)
    overlap: bool = True  # launch a greedy decode step before reading the last one's tokens (engine/core.py)
    batched_load_record: bool = True  # count a forward's expert load in one launch at its last MoE layer, not one per layer (telemetry/expert_load.py)
    l2_prefetch: bool = False  # the o projection prefetches the next layer's qkv weight into L2, weight streams load evict-first (gpu/l2_prefetch.py; slower)
    gemv_tail_prefetch: bool = False  # a prefetching GEMV's first wave prefetches the rows of its second into L2 (gpu/l2_prefetch.py; slower)
    warmup: bool = True  # on CUDA, run every request shape once at build so no request pays a compile (engine/warmup.py)
    mla_cache: str = "decompressed"  # decompressed | latent: MLA's KV layout (model/layers/mla.py)
    routes: bool = False  # record each token's experts per MoE layer, for SamplingParams.return_routed_experts (model/layers/routes.py)
    routes_weights: bool = False  # with routes, also their weights
    cuda_graph_batch_sizes: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 24, 32, 48, 64, 96, 128])


@dataclass
class RoutingConfig:
    """Routing axes applied around whichever router is chosen (moeframe/routers/adjust.py, engine/pruning.py)."""

    temperature: float = 1.0  # gate logits / temperature before the router (softmax temperature)
    skip_beta: float = 0.0  # dynamic skipping: drop experts weighing < skip_beta x the token's top weight; 0 = off
    prune_experts: int | None = None  # keep this many experts per MoE layer, ranked by a calibration pass; null = all
    prune_by: str = "frequency"  # frequency | reap: how the calibration pass ranks experts
    calibration_text: str | None = None  # text file the calibration pass reads (null: the shipped sample text)
    calibration_tokens: int = 2048  # tokens of it the calibration pass routes


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 30000
    model_name: str | None = None  # the id /v1/models reports (default: the preset or folder name)
    api_key: str | None = None  # when set (or $MOEFRAME_API_KEY), API routes need "Authorization: Bearer <key>"
    max_body_bytes: int = 4 * 2**20  # a larger request body gets 413, before it is read
    max_prompt_chars: int = 1_000_000  # characters of one prompt (or of a chat's messages), checked before tokenizing
    max_n: int = 128  # choices per prompt
    max_prompts: int = 256  # prompts in one /v1/completions call
    max_choices: int = 256  # entries of the `choices` constraint
    max_stop: int = 64  # entries of `stop` and of `stop_token_ids` (each is checked at every step)
    max_score_continuations: int = 64  # continuations in one /score call
    max_waiting_requests: int = 1024  # engine requests admitted but not yet running; more get 429
    admission_threads: int = 2  # threads that tokenize prompts and compile constraints, off the engine thread
    shutdown_grace_s: float = 5.0  # on SIGTERM, in-flight requests get this long to finish, then end with "abort"
    run_dir: str | None = None  # where the server writes files (expert-distribution dumps); default outputs/serve/DATE_TIME


@dataclass
class MoeframeConfig:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bfloat16 on CUDA, float32 on CPU) | float32 | float16 | bfloat16
    seed: int = 0
    # batch-invariant engine: a request's tokens and logprobs do not depend on its batch-mates
    # (every token computed on its own: model/layers/batch_invariant.py); slower
    deterministic: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    router: Any = None
    cache: Any = None
    experts: Any = None
    parallel: Any = None
    constraint: Any = None
    scheduler: Any = None
    workload: Any = None
    logger: Any = None


ConfigStore.instance().store(name="moeframe_schema", node=MoeframeConfig)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: '{name}' is not a device; valid choices: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: 'cuda' was asked for but CUDA is not available here; valid choices: auto, cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"device: '{name}' is not supported; valid choices: auto, cpu, cuda, cuda:N")
    return device


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"dtype: unknown choice '{name}'; valid choices: auto, {', '.join(DTYPES)}")
    return DTYPES[name]


def validate(cfg: DictConfig) -> None:
    """Check the fixed sections' values; each component group is checked by the layer that builds it."""
    device = resolve_device(cfg.device)
    resolve_dtype(cfg.dtype, device)
    if cfg.runner.attention not in ("auto", "torch", "triton"):
        raise ConfigError(f"runner.attention: unknown choice '{cfg.runner.attention}'; valid choices: auto, torch, triton")
    if cfg.runner.attention == "triton" and (problem := triton_unavailable(device)) is not None:
        raise ConfigError(f"runner.attention: {problem}; on the CPU choose auto or torch")
    if cfg.runner.routes_weights and not cfg.runner.routes:
        raise ConfigError("runner.routes_weights: routes' weights are recorded only with runner.routes=true")
    if cfg.model.path is None and cfg.model.preset is None:
        raise ConfigError("model: give model.path=DIR or model.preset=NAME")
    check_server(cfg.server)


SERVER_LIMITS = (
    "max_body_bytes", "max_prompt_chars", "max_n", "max_prompts", "max_choices", "max_stop", "max_score_continuations",
    "max_waiting_requests", "admission_threads",
)


def check_server(server: Any) -> None:
    for key in SERVER_LIMITS:
        if server[key] < 1:
            raise ConfigError(f"server.{key}: must be >= 1, got {server[key]}")
    if server.shutdown_grace_s < 0:
        raise ConfigError(f"server.shutdown_grace_s: must be >= 0, got {server.shutdown_grace_s}")
    if server.api_key is not None and not str(server.api_key):
        raise ConfigError("server.api_key: must not be empty (leave it unset for no key)")


def check_groups(cfg: DictConfig, registries: dict[str, Registry]) -> None:
    """Every named group chosen, and its node valid for its registry's component (one ConfigError line)."""
    for group, registry in registries.items():
        node = cfg.get(group)
        if node is None:
            raise ConfigError(f"{group}: no choice made; valid choices: {', '.join(registry.names())}")
        registry.parse_params(node)


def override_problem(overrides: list[str]) -> str | None:
    """The first bad command-line override (a choice no yaml names, a key no config has), as one line.

    Keys are not checked against conf/ when the command composes another
    config (``--config-dir``/``--config-name``, as a run folder's rerun does).
    """
    other_config = any(arg.startswith(("--config", "-cd", "-cn", "-cp")) for arg in overrides)
    return unknown_group_choice(overrides) or (None if other_config else unknown_key(overrides))


def unknown_group_choice(overrides: list[str]) -> str | None:
    """The first ``group=choice`` override naming no yaml in conf/<group>/, as one line (else None).

    Checked before Hydra composes, so a bad choice on the command line (also
    in a comma-separated sweep) fails in one line instead of Hydra's listing.
    """
    for arg in overrides:
        if arg.startswith("-") or "=" not in arg:
            continue
        key, value = arg.split("=", 1)
        group = key.lstrip("+~")
        folder = CONF_DIR / group
        if "." in group or "(" in value or not folder.is_dir():
            continue
        for choice in value.split(","):
            if choice and choice not in group_choices(group):
                return unknown_choice(group, choice)
    return None


def group_choices(group: str) -> list[str]:
    """The choices of a config group: the yaml names in conf/<group>/."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def unknown_choice(group: str, choice: str) -> str:
    return f"{group}: unknown choice '{choice}'; valid choices: {', '.join(group_choices(group))}"


def unknown_key(overrides: list[str]) -> str | None:
    """The first ``key=value`` override whose key the composed config would not have, as one line (else None).

    Hydra would refuse it too, in a multi-line "not in struct" report; this
    names the key and the valid keys instead. Fixed sections are checked
    against their dataclass, a component group against the yaml of each
    choice the command line (or conf/config.yaml) makes for it. Keys added
    with ``+`` are left to the component's own params check.
    """
    pairs = [arg.split("=", 1) for arg in overrides if not arg.startswith(("-", "+", "~")) and "=" in arg]
    chosen = {key: value.split(",") for key, value in pairs if "." not in key}
    for key, _ in pairs:
        path = key.split(".")
        if path[0] == "hydra" or "@" in key:
            continue
        top = {f.name: f for f in fields(MoeframeConfig)}
        if path[0] not in top:
            return f"{path[0]}: not a config key; valid keys: {', '.join(sorted(top))}"
        if len(path) == 1:
            continue
        section = top[path[0]].default_factory if is_dataclass_field(top[path[0]]) else None
        if section is not None:
            valid = sorted(f.name for f in fields(section))
            if path[1] not in valid:
                return f"{path[0]}.{path[1]}: not a key of {path[0]}; valid keys: {', '.join(valid)}"
            continue
        for choice in chosen.get(path[0]) or [default_choice(path[0])]:
            yaml = CONF_DIR / path[0] / f"{choice}.yaml"
            valid = sorted(OmegaConf.load(yaml)) if choice and yaml.is_file() else []
            if valid and path[1] not in valid:
                return f"{path[0]}.{path[1]}: not a key of {path[0]} '{choice}'; valid keys: {', '.join(valid)}"
    return None


def is_dataclass_field(f: Field) -> bool:
    return f.default_factory is not MISSING and is_dataclass(f.default_factory)


def default_choice(group: str) -> str | None:
    """The choice conf/config.yaml's defaults list makes for ``group`` (None if it makes none)."""
    for entry in OmegaConf.load(CONF_DIR / "config.yaml").defaults:
        if isinstance(entry, str):
            continue
        for key, value in entry.items():
            if key.split()[-1] == group:
                return str(value)
    return None
