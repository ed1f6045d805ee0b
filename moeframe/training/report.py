"""What a training run leaves beside its checkpoint: the log, the loss curve, the model card.

The card follows the Hugging Face model-card habit (what the model is, the
data, how it was trained, how it scores) so a checkpoint found later says
where its numbers came from.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_log(log: list[dict], out: Path) -> None:
    (out / "training_log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in log), encoding="utf-8")


def plot_losses(log: list[dict], out: Path, title: str, top_k: int | None) -> None:
    """Training LM loss, auxiliary loss (MoE only) and held-out loss against tokens seen, as loss_curve.png."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9 if top_k else 4.8, 3.6))
    FigureCanvasAgg(fig)
    lm = fig.add_subplot(1, 2 if top_k else 1, 1)
    tokens = [row["tokens"] / 1e6 for row in log]
    lm.plot(tokens, [row["lm_loss"] for row in log], lw=0.8, alpha=0.7, label="train (LM loss)")
    evals = [row for row in log if "heldout_loss" in row]
    lm.plot([r["tokens"] / 1e6 for r in evals], [r["heldout_loss"] for r in evals], "o-", label="held-out")
    lm.set(xlabel="tokens (M)", ylabel="cross-entropy (nats)", title=title)
    lm.legend()
    if top_k:
        aux = fig.add_subplot(1, 2, 2)
        aux.plot(tokens, [row["aux_loss"] for row in log], lw=0.8)
        aux.axhline(top_k, color="grey", ls=":", lw=0.8)
        aux.set(xlabel="tokens (M)", ylabel=f"load-balancing loss (uniform = {top_k})", title="router balance")
    fig.tight_layout()
    fig.savefig(out / "loss_curve.png", dpi=110)


def write_card(name: str, summary: dict, command: str, out: Path) -> None:
    recipe, data, final = summary["recipe"], summary["data"], summary["final"]
    last = summary.get("last_train_row", {})
    stopped = " (stopped early by the time limit)" if summary["stopped_early"] else ""
    lines = [
        f"# {name}",
        "",
        f"{recipe['description']}. Trained by moeframe's `tools/train_moe.py` with transformers'",
        f"`{recipe['config_class'].removesuffix('Config')}ForCausalLM` and torch's AdamW; not a published model.",
        "",
        "    " + command,
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {summary['parameters']:,} total, {summary['active_parameters']:,} active per token |",
        f"| corpus | {data['corpus']} (hash {data['corpus_hash']}) |",
        f"| documents | {data['train_documents']} train files ({data['train_chars']:,} chars, {data['train_tokens']:,} tokens), "
        f"{data['heldout_documents']} held-out files ({data['heldout_chars']:,} chars, {data['heldout_tokens']:,} tokens) |",
        f"| split | by file: a file is held out when the hash of its path falls under {recipe['heldout_fraction']} |",
        f"| tokenizer | byte-level BPE of {recipe['vocab_size']} tokens trained on the training split |",
        f"| steps | {summary['steps_done']} of {recipe['steps']}{stopped}, batch {recipe['batch_size']} x {recipe['seq_len']} tokens, "
        f"lr {recipe['lr']} (warm-up {recipe['warmup_steps']}, cosine to {recipe['min_lr_ratio']}x) |",
        f"| load-balancing loss | coefficient {recipe['router_aux_loss_coef']}; last step {last.get('aux_loss', float('nan')):.4f} (uniform routing scores top_k = {summary['top_k']}) |"
        if summary["top_k"]
        else "| load-balancing loss | none (dense model) |",
        f"| final training LM loss | {last.get('lm_loss', float('nan')):.4f} |",
        f"| held-out (saved {recipe['save_dtype']} weights) | loss {final['heldout_loss']:.4f}, perplexity {final['heldout_perplexity']:.2f}, "
        f"next-token accuracy {final['heldout_accuracy']:.4f} over {final['heldout_positions']:,} positions |",
        f"| seed | {recipe['seed']} |",
        f"| machine | {summary['device']}, torch {summary['torch']}, transformers {summary['transformers']}; "
        f"data {summary['data_s']} s, training {summary['train_s']} s |",
        "",
        "Files: `model.safetensors`, `config.json`, `tokenizer.json`, `heldout.txt` (held-out text the",
        "workloads score), `training_log.jsonl`, `loss_curve.png`, `train_result.json` (the recipe in full).",
        "",
    ]
    (out / "README.md").write_text("\n".join(lines), encoding="utf-8")
