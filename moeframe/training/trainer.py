"""The training loop: transformers' own MoE class, torch's AdamW, packed windows of the corpus.

The model is ``AutoModelForCausalLM.from_config`` of the recipe's config with
``output_router_logits`` on, so its loss is the language-model loss plus the
family's own load-balancing loss, and the checkpoint it saves is exactly what
a hub checkpoint of that family looks like. Each step's windows are drawn
from a generator seeded by (seed, step), so a resumed run draws the same
batches as an uninterrupted one, and a fixed seed gives the same weights on
one machine kind (on CPU bit for bit; on CUDA only with ``deterministic``).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers
from tqdm import tqdm

from moeframe.model.checkpoint_maker import hub_config_dict
from moeframe.model.tokenizer import EOS_TOKEN, save_tokenizer, train_bpe
from moeframe.training.corpus import Document, corpus_hash, describe, load_documents, sample_by_hash, split_by_file
from moeframe.training.recipes import Recipe
from moeframe.training.report import plot_losses, write_card, write_log

STATE_DIR = "train_state"
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class TokenStreams:
    """The corpus as two token streams (documents joined by <|endoftext|>) and what they came from."""

    train: torch.Tensor
    heldout: torch.Tensor
    heldout_text: str
    summary: dict


def prepare_data(recipe: Recipe, tokenizer_dir: Path) -> tuple[transformers.PreTrainedTokenizerBase, TokenStreams]:
    """Read and split the corpus, train (or reload, when resuming) the BPE, and tokenize both splits."""
    from tokenizers import Tokenizer

    docs = load_documents(recipe.corpus, recipe.corpus_max_chars)
    train_docs, heldout_docs = split_by_file(docs, recipe.heldout_fraction)
    if (tokenizer_dir / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))
    else:
        bpe_docs = sample_by_hash(train_docs, recipe.tokenizer_max_chars, salt="tokenizer")
        tokenizer = train_bpe((d.text for d in bpe_docs), recipe.vocab_size)
        save_tokenizer(tokenizer, tokenizer_dir)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    streams = TokenStreams(
        train=stream(tokenizer, train_docs, eos),
        heldout=stream(tokenizer, heldout_docs, eos),
        heldout_text="\n\n".join(d.text for d in heldout_docs)[: recipe.heldout_sample_chars],
        summary={
            "corpus": describe(recipe.corpus),
            "corpus_hash": corpus_hash(docs),
            "documents": len(docs),
            "train_documents": len(train_docs),
            "heldout_documents": len(heldout_docs),
            "train_chars": sum(len(d.text) for d in train_docs),
            "heldout_chars": sum(len(d.text) for d in heldout_docs),
            "heldout_files": [d.path for d in heldout_docs][:50],
        },
    )
    streams.summary["train_tokens"] = int(streams.train.numel())
    streams.summary["heldout_tokens"] = int(streams.heldout.numel())
    return tokenizer, streams


def stream(tokenizer, docs: list[Document], eos: int) -> torch.Tensor:
    ids: list[int] = []
    for enc in tokenizer.encode_batch([d.text for d in docs]):
        ids.extend(enc.ids)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.int64)


def is_moe(config: transformers.PretrainedConfig) -> bool:
    return getattr(config, "num_experts_per_tok", None) is not None


def build_model(recipe: Recipe, vocab_size: int, eos_id: int) -> transformers.PreTrainedModel:
    """The recipe's model; an MoE one returns its load-balancing loss (a dense baseline has none)."""
    config = getattr(transformers, recipe.config_class)(
        **recipe.model, vocab_size=vocab_size, bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id
    )
    if is_moe(config):
        config.output_router_logits = True
        config.router_aux_loss_coef = recipe.router_aux_loss_coef
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    if recipe.experts_implementation is not None and is_moe(config):
        try:
            model.set_experts_implementation(recipe.experts_implementation)
        except (AttributeError, ValueError, ImportError) as err:
            warnings.warn(f"experts_implementation={recipe.experts_implementation} unavailable ({err}); training with transformers' default")
    return model


def batch_at(train: torch.Tensor, recipe: Recipe, step: int) -> torch.Tensor:
    """The step's windows of ``seq_len + 1`` tokens, from a generator seeded by (seed, step)."""
    gen = torch.Generator().manual_seed(recipe.seed * 1_000_003 + step)
    starts = torch.randint(0, train.numel() - recipe.seq_len, (recipe.batch_size,), generator=gen)
    return train[starts[:, None] + torch.arange(recipe.seq_len)[None, :]]


def lr_factor(recipe: Recipe, step: int) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_ratio`` at the last step."""
    if step < recipe.warmup_steps:
        return (step + 1) / recipe.warmup_steps
    progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
    return recipe.min_lr_ratio + (1 - recipe.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def make_optimizer(model: torch.nn.Module, recipe: Recipe, device: torch.device) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.95), eps=1e-8, fused=device.type == "cuda")


@torch.no_grad()
def evaluate(model: torch.nn.Module, tokens: torch.Tensor, seq_len: int, max_tokens: int, device: torch.device, autocast: str | None) -> dict:
    """Held-out next-token loss, perplexity and accuracy over non-overlapping windows (no auxiliary loss)."""
    num_windows = (min(tokens.numel(), max_tokens + 1) - 1) // seq_len
    if num_windows < 1:
        raise ValueError(f"the held-out split has {tokens.numel()} tokens, fewer than one window of {seq_len + 1}")
    windows = tokens[: num_windows * seq_len + 1].unfold(0, seq_len + 1, seq_len)
    extra = {"output_router_logits": False} if is_moe(model.config) else {}
    was_training = model.training
    model.eval()
    nll, correct = 0.0, 0
    for batch in windows.split(16):
        batch = batch.to(device)
        with _autocast(device, autocast):
            logits = model(input_ids=batch[:, :-1], **extra).logits.float()
        targets = batch[:, 1:]
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == targets).sum().item()
    model.train(was_training)
    count = num_windows * seq_len
    loss = nll / count
    return {"heldout_loss": loss, "heldout_perplexity": math.exp(loss), "heldout_accuracy": correct / count, "heldout_positions": count}


def _autocast(device: torch.device, dtype: str | None):
    if dtype is None or device.type != "cuda":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=DTYPES[dtype])


@dataclass
class TrainResult:
    out_dir: Path
    steps_done: int
    stopped_early: bool
    final: dict  # held-out figures of the saved (rounded) checkpoint
    log: list[dict]


def train(
    recipe: Recipe,
    out_dir: str | Path,
    device: str = "cpu",
    resume: bool = True,
    time_limit_s: float | None = None,
    progress: bool = True,
    on_log: Callable[[dict], None] | None = None,
    name: str | None = None,
    command: str = "",
) -> TrainResult:
    """Train ``recipe`` into ``out_dir``: safetensors + config.json + tokenizer, log, loss curve, model card.

    ``resume`` continues from ``out_dir/train_state`` when an earlier run left
    one (weights, optimiser, step and log). ``time_limit_s`` stops early (the
    card says so) so a device run keeps its time for what follows.
    """
    out, dev = Path(out_dir), torch.device(device)
    out.mkdir(parents=True, exist_ok=True)
    state_dir = out / STATE_DIR
    if not resume:
        shutil.rmtree(state_dir, ignore_errors=True)
    if dev.type == "cuda" and recipe.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(recipe.deterministic, warn_only=True)
    torch.manual_seed(recipe.seed)
    started = time.perf_counter()
    tokenizer, data = prepare_data(recipe, state_dir)
    eos = tokenizer.token_to_id(EOS_TOKEN)
    model = build_model(recipe, tokenizer.get_vocab_size(), eos).to(dev)
    experts_impl = model.config._experts_implementation if hasattr(model.config, "_experts_implementation") else "default"
    optimizer = make_optimizer(model, recipe, dev)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(recipe, s))
    step, log = 0, []
    if (state_dir / "state.pt").is_file():
        saved = torch.load(state_dir / "state.pt", map_location=dev, weights_only=False)
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        step, log = saved["step"], saved["log"]
    data_s = time.perf_counter() - started
    model.train()
    coef = recipe.router_aux_loss_coef
    bar = tqdm(total=recipe.steps, initial=step, desc=f"train {out.name}", disable=not progress, dynamic_ncols=True)
    stopped_early = False
    train_started = time.perf_counter()
    while step < recipe.steps:
        if time_limit_s is not None and time.perf_counter() - started > time_limit_s:
            stopped_early = True
            break
        batch = batch_at(data.train, recipe, step).to(dev, non_blocking=True)
        with _autocast(dev, recipe.autocast):
            outputs = model(input_ids=batch, labels=batch)
        loss = outputs.loss
        aux = outputs.aux_loss if is_moe(model.config) else torch.zeros(())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        schedule.step()
        step += 1
        row = {
            "step": step, "loss": loss.item(), "aux_loss": aux.item(), "lm_loss": loss.item() - coef * aux.item(),
            "grad_norm": grad_norm.item(), "lr": schedule.get_last_lr()[0], "tokens": step * recipe.batch_size * recipe.seq_len,
            "elapsed_s": round(time.perf_counter() - started, 2),
        }  # fmt: skip
        if step % recipe.eval_every == 0 or step == recipe.steps:
            row.update(evaluate(model, data.heldout, recipe.seq_len, recipe.eval_tokens, dev, recipe.autocast))
        log.append(row)
        if on_log is not None:
            on_log(row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['lm_loss']:.3f}", aux=f"{row['aux_loss']:.3f}")
        if step % recipe.save_every == 0 and step < recipe.steps:
            save_state(state_dir, model, optimizer, schedule, step, log)
    bar.close()
    train_s = time.perf_counter() - train_started
    save_checkpoint(model, tokenizer, recipe, out)
    final = evaluate_saved(out, data.heldout, recipe, dev)
    (out / "heldout.txt").write_text(data.heldout_text, encoding="utf-8")
    result = TrainResult(out, step, stopped_early, final, log)
    summary = {
        "recipe": asdict(recipe), "data": data.summary, "steps_done": step, "stopped_early": stopped_early,
        "final": final, "parameters": sum(p.numel() for p in model.parameters()),
        "active_parameters": active_parameters(model), "device": device_name(dev),
        "torch": torch.__version__, "transformers": transformers.__version__,
        "data_s": round(data_s, 1), "train_s": round(train_s, 1), "command": command,
        "experts_implementation": experts_impl, "top_k": getattr(model.config, "num_experts_per_tok", None), "last_train_row": log[-1] if log else {},
    }  # fmt: skip
    (out / "train_result.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    write_log(log, out)
    plot_losses(log, out, name or out.name, summary["top_k"])
    write_card(name or out.name, summary, command, out)
    shutil.rmtree(state_dir, ignore_errors=True)
    return result


def save_state(state_dir: Path, model, optimizer, schedule, step: int, log: list[dict]) -> None:
    """Weights, optimiser and schedule, written to a temporary file and renamed: an interrupt never leaves half a state."""
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / "state.pt.tmp"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "step": step, "log": log}, tmp)
    os.replace(tmp, state_dir / "state.pt")


def save_checkpoint(model: transformers.PreTrainedModel, tokenizer, recipe: Recipe, out: Path) -> None:
    """safetensors in ``save_dtype``, config.json as hub checkpoints spell it, the tokenizer beside them."""
    moe = is_moe(model.config)
    model.config.output_router_logits = False
    dtype = DTYPES[recipe.save_dtype]
    cpu_copy = {k: v.detach().to("cpu", dtype) for k, v in model.state_dict().items()}
    with torch.device("meta"):
        shell = transformers.AutoModelForCausalLM.from_config(model.config)
    shell.load_state_dict(cpu_copy, assign=True)
    shell.generation_config = transformers.GenerationConfig(
        bos_token_id=model.config.eos_token_id, eos_token_id=model.config.eos_token_id, pad_token_id=model.config.eos_token_id
    )
    shell.save_pretrained(out)
    hub = hub_config_dict(model.config)
    hub["torch_dtype"] = recipe.save_dtype
    hub.pop("_experts_implementation", None)
    hub.pop("experts_implementation", None)
    (out / "config.json").write_text(json.dumps(hub, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    save_tokenizer(tokenizer, out)
    model.config.output_router_logits = moe


def evaluate_saved(out: Path, heldout: torch.Tensor, recipe: Recipe, device: torch.device) -> dict:
    """Held-out figures of the checkpoint as written (rounded to ``save_dtype``), read back in float32."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).to(device)
    return evaluate(model, heldout, recipe.seq_len, recipe.eval_tokens, device, recipe.autocast)


def active_parameters(model: transformers.PreTrainedModel) -> int:
    """Parameters one token uses: all but the unchosen experts' (top-k of E)."""
    cfg = model.config
    if not is_moe(cfg):
        return sum(p.numel() for p in model.parameters())
    num_experts = getattr(cfg, "num_experts", None) or getattr(cfg, "num_local_experts")
    expert_params = sum(p.numel() for n, p in model.named_parameters() if ".experts." in n)
    total = sum(p.numel() for p in model.parameters())
    return int(total - expert_params + expert_params * cfg.num_experts_per_tok / num_experts)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"
