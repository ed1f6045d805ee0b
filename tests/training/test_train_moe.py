"""tools/train_moe.py's loop at toy size: the loss falls, a resumed run equals an uninterrupted one,
and what it writes loads through moeframe's loader with transformers' logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from moeframe.training.recipes import get_recipe
from moeframe.training.trainer import train

TOY = [
    "vocab_size=320", "corpus_max_chars=150000", "seq_len=32", "batch_size=8", "steps=24", "warmup_steps=4",
    "eval_every=12", "eval_tokens=1024", "save_every=6", "heldout_fraction=0.1", "heldout_sample_chars=4000",
    "model.hidden_size=32", "model.intermediate_size=16", "model.num_hidden_layers=1", "model.num_attention_heads=2",
    "model.num_key_value_heads=2", "model.num_experts=4", "model.num_experts_per_tok=2",
]  # fmt: skip


def toy(**extra: object) -> object:
    return get_recipe("trained-tiny-olmoe").with_overrides(TOY + [f"{k}={json.dumps(v)}" for k, v in extra.items()])


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("toy") / "toy-olmoe"
    return train(toy(), out, progress=False), out


def test_loss_falls_and_heldout_beats_uniform(trained) -> None:
    result, _ = trained
    losses = [row["lm_loss"] for row in result.log]
    assert sum(losses[-4:]) / 4 < losses[0] - 0.5
    assert result.final["heldout_perplexity"] < 320 / 2


def test_writes_checkpoint_card_log_and_heldout_text(trained) -> None:
    result, out = trained
    for name in ("model.safetensors", "config.json", "tokenizer.json", "README.md", "loss_curve.png", "heldout.txt", "training_log.jsonl"):
        assert (out / name).is_file(), name
    assert not (out / "train_state").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["output_router_logits"] is False and config["torch_dtype"] == "float16"
    summary = json.loads((out / "train_result.json").read_text())
    held = set(summary["data"]["heldout_files"])
    assert held and summary["data"]["train_documents"] > 0
    assert all(load_file(str(out / "model.safetensors"))[k].dtype == torch.float16 for k in ["lm_head.weight"])
    assert len((out / "training_log.jsonl").read_text().splitlines()) == result.steps_done == 24


def assert_loader_matches_transformers(out: Path) -> None:
    """moeframe's loader and transformers give the same logits on the checkpoint's own held-out text."""
    from transformers import AutoModelForCausalLM

    from moeframe import Engine

    engine = Engine.from_overrides([f"model.path={out}", "device=cpu", "dtype=float32", "cache=none"])
    ids = engine.encode((out / "heldout.txt").read_text()[:400])[:40]
    ref = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        ref_logits = ref(torch.tensor([ids])).logits[0]
    assert torch.linalg.norm(engine.score(ids) - ref_logits) / torch.linalg.norm(ref_logits) < 1e-4


def test_checkpoint_matches_transformers_through_the_loader(trained) -> None:
    assert_loader_matches_transformers(trained[1])


def test_resumed_run_equals_uninterrupted_run(trained, tmp_path: Path) -> None:
    def stop_at_step_9(row: dict) -> None:
        if row["step"] == 9:
            raise Interrupt

    out = tmp_path / "resumed"
    with pytest.raises(Interrupt):
        train(toy(), out, progress=False, on_log=stop_at_step_9)
    assert (out / "train_state" / "state.pt").is_file()
    resumed = train(toy(), out, progress=False)
    assert [r["lm_loss"] for r in resumed.log] == [r["lm_loss"] for r in trained[0].log]
    ours, straight = load_file(str(out / "model.safetensors")), load_file(str(trained[1] / "model.safetensors"))
    assert all(torch.equal(ours[k], straight[k]) for k in straight)


@pytest.mark.parametrize(
    ("recipe", "shape"),
    [
        ("trained-tiny-qwen3-moe", ["model.num_experts=4", "model.head_dim=16", "model.moe_intermediate_size=16"]),
        ("trained-tiny-mixtral", ["model.num_local_experts=4"]),
    ],
)
def test_other_families_write_checkpoints_the_loader_reads_as_transformers_does(recipe: str, shape: list[str], tmp_path: Path) -> None:
    common = [item for item in TOY if not item.startswith("model.num_experts")] + ["steps=4", "eval_every=4"]
    out = tmp_path / recipe
    train(get_recipe(recipe).with_overrides(common + shape), out, progress=False)
    assert_loader_matches_transformers(out)
