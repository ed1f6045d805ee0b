"""HF checkpoint folder -> our CausalLM, with experts stacked into [E, ...] at load.

The model is built on the meta device and its tensors are assigned straight
from safetensors in the target dtype and device, so a checkpoint is read
once and never held twice (nano-vllm's loader does the same per shard).
Checkpoints may store experts per expert (hub naming) or fused as
transformers 5 keeps them in memory; both load. Attention's separate q/k/v
projections are concatenated into its one ``qkv_proj`` as they are read (vLLM
loads QKVParallelLinear the same way, shard by shard).
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from moeframe.errors import CheckpointError
from moeframe.model.causal_lm import CausalLM, HeldElsewhere, MoEFactory
from moeframe.model.families import Family, family_of, rename
from moeframe.model.fp8_checkpoint import FP8, SCALE_SUFFIX, block_size, dequantize_blocks, is_mtp_tensor
from moeframe.model.layers.attention import qkv_widths
from moeframe.model.spec import ModelSpec

# Shards the meta-device model for this rank and returns how to cut each full
# tensor (by our name) to it, None for a tensor another rank holds; the
# parallel strategy supplies it (moeframe/parallel).
ShardFn = Callable[[CausalLM], Callable[[str, torch.Tensor], torch.Tensor | None]]

EXPERT_PART = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
QKV_PART = re.compile(r"^(layers\.\d+\.self_attn)\.([qkv])_proj\.(weight|bias)$")
FUSED_PART = re.compile(r"^layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
FLOAT32_TENSORS = re.compile(r"e_score_correction_bias$")


def read_hf_config(path: Path) -> tuple[dict, object]:
    """config.json as a dict and as transformers' parsed config."""
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"checkpoint folder {path} has no config.json")
    try:
        raw = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{config_file} is not valid JSON: {err}") from None
    family_of(str(raw.get("model_type")))
    from transformers import AutoConfig

    try:
        hf_config = AutoConfig.from_pretrained(str(path))
    except (ValueError, KeyError, TypeError, OSError) as err:
        raise CheckpointError(f"{config_file} could not be parsed: {err}") from None
    return raw, hf_config


def load_spec(path: str | Path) -> tuple[ModelSpec, object]:
    _, hf_config = read_hf_config(Path(path))
    return family_of(hf_config.model_type).parse(hf_config), hf_config


def iter_tensors(path: Path, fam: Family, raw_config: dict | None = None):
    """(our name, tensor) of every checkpoint tensor; FP8 block-quantized weights come dequantized (float32) and
    multi-token-prediction layers are left out (fp8_checkpoint.py)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"checkpoint folder {path} has no *.safetensors files")
    raw_config = raw_config or {}
    block = block_size(raw_config)
    mtp_layers = int(raw_config.get("num_nextn_predict_layers") or 0)
    num_layers = int(raw_config.get("num_hidden_layers") or 0)
    skipped = 0
    try:
        scale_files = {name: file for file in files for name in safe_keys(file) if name.endswith(SCALE_SUFFIX)}
        for file in files:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if mtp_layers and is_mtp_tensor(name, num_layers):
                        skipped += 1
                    elif not (block is not None and name.endswith(SCALE_SUFFIX)):
                        yield rename(fam, name), read_weight(f, name, scale_files, block)
    except (OSError, RuntimeError, ValueError, SafetensorError) as err:
        raise CheckpointError(f"{path} is corrupt or unreadable: {err}") from None
    if skipped:
        warnings.warn(
            f"{path}: {skipped} tensors of {mtp_layers} multi-token-prediction layer(s) not loaded "
            "(they serve speculative decoding only)",
            stacklevel=2,
        )


def safe_keys(file: Path) -> list[str]:
    with safe_open(str(file), framework="pt") as f:
        return list(f.keys())


def read_weight(f, name: str, scale_files: dict[str, Path], block: tuple[int, int] | None) -> torch.Tensor:
    """One tensor; an FP8 weight multiplied by its ``_scale_inv`` blocks."""
    tensor = f.get_tensor(name)
    if tensor.dtype != FP8:
        return tensor
    scale_name = name + SCALE_SUFFIX
    if block is None or scale_name not in scale_files:
        raise CheckpointError(
            f"{name} is float8_e4m3fn but the checkpoint has no {scale_name} with an fp8 quantization_config "
            "(DeepSeek-V3's block layout is the FP8 layout this loader reads)"
        )
    with safe_open(str(scale_files[scale_name]), framework="pt") as scales:
        return dequantize_blocks(tensor, scales.get_tensor(scale_name), block)


def load_model(
    path: str | Path,
    moe_factory: MoEFactory,
    dtype: torch.dtype,
    device: torch.device | str,
    shard: ShardFn | None = None,
    spec: ModelSpec | None = None,
) -> tuple[CausalLM, ModelSpec]:
    """The checkpoint's model; ``spec``: the checkpoint's own spec with run-time layout choices (MLA's cache)."""
    path = Path(path)
    raw_config, hf_config = read_hf_config(path)
    spec = spec or family_of(hf_config.model_type).parse(hf_config)
    tensors = iter_tensors(path, family_of(spec.family), raw_config)
    if torch.device(device).type == "cpu":
        # safetensors hands out views of the file's mapping; a view kept as a weight pins the mapping, and with it
        # every page read (an MoE's per-expert tensors, read once to be stacked, would stay resident beside the
        # stacked copy). Copied out as read, the mapping goes when loading ends.
        tensors = ((name, tensor.clone()) for name, tensor in tensors)
    return assemble_model(spec, hf_config, tensors, moe_factory, dtype, device, str(path), shard), spec


def assemble_model(
    spec: ModelSpec,
    hf_config: object,
    tensors: Iterable[tuple[str, torch.Tensor]],
    moe_factory: MoEFactory,
    dtype: torch.dtype,
    device: torch.device | str,
    source: str,
    shard: ShardFn | None = None,
) -> CausalLM:
    """Our model from (name, tensor) pairs already renamed to our layout (see families.rename)."""
    with torch.device("meta"):
        model = CausalLM(spec, moe_factory, hf_config)
    cut = shard(model) if shard is not None else None
    expected = dict(model.state_dict(keep_vars=True))
    state: dict[str, torch.Tensor] = {}
    experts: dict[tuple[int, str], dict[int, torch.Tensor]] = {}

    def place(name: str, tensor: torch.Tensor) -> None:
        if cut is not None:
            tensor = cut(name, tensor)
            if tensor is None:
                return
        state[name] = tensor.to(device=device, dtype=tensor_dtype(name, dtype))

    for name, tensor in fuse_qkv(spec, tensors, set(expected)):
        if (m := EXPERT_PART.match(name)) is not None:
            experts.setdefault((int(m[1]), m[3]), {})[int(m[2])] = tensor
        elif (m := FUSED_PART.match(name)) is not None:
            place(f"layers.{m[1]}.mlp.{'w13' if m[2] == 'gate_up_proj' else 'w2'}", tensor)
        elif name == "lm_head.weight" and spec.tie_word_embeddings:
            continue
        else:
            place(name, tensor)
    stack_experts(spec, experts, place)

    if spec.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {source} does not match its {spec.family} config: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}"
        )
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"checkpoint {source}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}")
    return finish_model(model, state)


def fuse_qkv(
    spec: ModelSpec, tensors: Iterable[tuple[str, torch.Tensor]], expected: set[str]
) -> Iterator[tuple[str, torch.Tensor]]:
    """Checkpoint q_proj/k_proj/v_proj -> one ``qkv_proj`` (q rows, then k, then v) where the model fuses them.

    A layer's three parts are held only until the last of them is read. Names
    the model does not fuse (MLA's q_proj) pass through unchanged.
    """
    q_out, kv_out = qkv_widths(spec.attention)
    widths = {"q": q_out, "k": kv_out, "v": kv_out}
    pending: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for name, tensor in tensors:
        m = QKV_PART.match(name)
        if m is None or f"{m[1]}.qkv_proj.{m[3]}" not in expected:
            yield name, tensor
            continue
        prefix, part, leaf = m[1], m[2], m[3]
        want = (widths[part], spec.hidden_size) if leaf == "weight" else (widths[part],)
        if tuple(tensor.shape) != want:
            raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}, expected {want}")
        parts = pending.setdefault((prefix, leaf), {})
        parts[part] = tensor
        if len(parts) == 3:
            del pending[(prefix, leaf)]
            yield f"{prefix}.qkv_proj.{leaf}", torch.cat([parts["q"], parts["k"], parts["v"]])
    absent = [f"{prefix}.{p}_proj.{leaf}" for (prefix, leaf), parts in pending.items() for p in "qkv" if p not in parts]
    if absent:
        raise CheckpointError(f"checkpoint is missing {absent[:5]}{'...' if len(absent) > 5 else ''}")


def tensor_dtype(name: str, dtype: torch.dtype) -> torch.dtype:
    """The dtype a tensor is kept in: the model's, except routing state kept in float32."""
    return torch.float32 if FLOAT32_TENSORS.search(name) else dtype


def finish_model(model: CausalLM, state: dict[str, torch.Tensor]) -> CausalLM:
    """Assign the tensors, tie embeddings where the checkpoint does, convert experts once, eval mode."""
    model.load_state_dict(state, assign=True, strict=False)
    if model.spec.tie_word_embeddings and not isinstance(model.lm_head, HeldElsewhere):
        model.lm_head.weight = model.embed_tokens.weight
    prepare_experts(model)
    return model.eval()


def hf_state_tensors(spec: ModelSpec, state_dict: dict[str, torch.Tensor]) -> Iterator[tuple[str, torch.Tensor]]:
    """A transformers model's in-memory state dict, renamed to our layout (for benchmarks on shared weights)."""
    fam = family_of(spec.family)
    for name, tensor in state_dict.items():
        yield rename(fam, name), tensor


def random_model(
    spec: ModelSpec,
    hf_config: object,
    moe_factory: MoEFactory,
    dtype: torch.dtype,
    device: torch.device | str,
    seed: int,
    shard: ShardFn | None = None,
) -> CausalLM:
    """Random weights made straight on the device, for real-shape benchmarks without checkpoint files.

    Matrices ~ N(0, 0.02) (the HF initialiser's scale), norms 1, biases 0: the
    speed of a forward does not depend on the values. Under a parallel
    strategy every rank draws each full tensor in the same order and keeps
    its cut, so replicated weights agree across ranks.
    """
    with torch.device("meta"):
        model = CausalLM(spec, moe_factory, hf_config)
    full = dict(model.state_dict(keep_vars=True))
    cut = shard(model) if shard is not None else None
    gen = torch.Generator(device=device).manual_seed(seed)
    state = {}
    for name, ref in full.items():
        if spec.tie_word_embeddings and name == "lm_head.weight":
            continue
        target = tensor_dtype(name, dtype)
        if name.endswith("norm.weight"):
            state[name] = torch.ones(ref.shape, dtype=target, device=device)
        elif ref.dim() >= 2:
            state[name] = torch.randn(ref.shape, generator=gen, dtype=target, device=device).mul_(0.02)
        else:
            state[name] = torch.zeros(ref.shape, dtype=target, device=device)
        if cut is not None:
            kept = cut(name, state.pop(name))
            if kept is not None:
                state[name] = kept
    return finish_model(model, state)


def stack_experts(spec: ModelSpec, experts: dict, place) -> None:
    """Per-expert gate/up/down tensors -> w13 [E, 2I, H] (gate rows, then up rows) and w2 [E, H, I]."""
    if not experts:
        return
    num_experts = spec.moe.num_experts
    for layer in sorted({layer for layer, _ in experts}):
        parts = {}
        for proj in ("gate_proj", "up_proj", "down_proj"):
            got = experts.get((layer, proj), {})
            if sorted(got) != list(range(num_experts)):
                raise CheckpointError(f"layer {layer}: expected {num_experts} experts' {proj}, found {len(got)}")
            parts[proj] = torch.stack([got[e] for e in range(num_experts)])
        place(f"layers.{layer}.mlp.w13", torch.cat([parts["gate_proj"], parts["up_proj"]], dim=1))
        place(f"layers.{layer}.mlp.w2", parts["down_proj"])


def prepare_experts(model: CausalLM) -> None:
    """Let each layer's expert kernel convert the stacked weights into its own layout, once.

    The gate is kept in float32: routing is computed in float32 (as DeepSeek's
    reference does), and a float32 copy made once saves a cast every step.
    """
    for layer in model.layers:
        if layer.is_sparse:
            moe = layer.mlp
            moe.gate.weight = torch.nn.Parameter(moe.gate.weight.data.float(), requires_grad=False)
            w13, w2 = moe.kernel.prepare(moe.w13.data, moe.w2.data)
            moe.w13 = torch.nn.Parameter(w13, requires_grad=False)
            moe.w2 = torch.nn.Parameter(w2, requires_grad=False)
