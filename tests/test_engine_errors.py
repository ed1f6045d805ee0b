"""Bad input gets one clear error naming the problem, at start or for the one request."""

from __future__ import annotations

import json
import shutil

import pytest

from moeframe import Engine, SamplingParams
from moeframe.api import compose_config
from moeframe.errors import CheckpointError, ConfigError, RequestError


def overrides(path, *extra: str) -> list[str]:
    return [f"model.path={path}", "device=cpu", "dtype=float32", *extra]


@pytest.fixture(scope="module")
def engine(checkpoint_factory) -> Engine:
    return Engine.from_overrides(overrides(checkpoint_factory("tiny-qwen3-moe")))


def test_missing_checkpoint_folder_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        Engine.from_overrides(overrides(tmp_path / "nowhere"))


def test_folder_without_config_is_named(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        Engine.from_overrides(overrides(tmp_path))


def test_corrupt_weights_are_named(tmp_path, checkpoint_factory) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(checkpoint_factory("tiny-olmoe"), broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        Engine.from_overrides(overrides(broken))


def test_missing_tensor_is_named(tmp_path, checkpoint_factory) -> None:
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "partial"
    shutil.copytree(checkpoint_factory("tiny-olmoe"), broken)
    tensors = load_file(str(broken / "model.safetensors"))
    tensors.pop("model.norm.weight")
    save_file(tensors, str(broken / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing.*norm.weight"):
        Engine.from_overrides(overrides(broken))


def test_unknown_architecture_lists_supported_ones(tmp_path, checkpoint_factory) -> None:
    odd = tmp_path / "odd"
    shutil.copytree(checkpoint_factory("tiny-olmoe"), odd)
    config = json.loads((odd / "config.json").read_text())
    config["model_type"] = "gpt_unknown"
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="unknown architecture 'gpt_unknown'.*mixtral"):
        Engine.from_overrides(overrides(odd))


def test_unknown_group_choice_lists_valid_choices() -> None:
    with pytest.raises(ConfigError, match=r"router: unknown choice 'top9'; valid choices: .*top2"):
        Engine.from_overrides(["router=top9"])


def test_bad_component_value_names_the_key(checkpoint_factory) -> None:
    with pytest.raises(ConfigError, match="scheduler.*chunk_size"):
        Engine.from_overrides(overrides(checkpoint_factory("tiny-olmoe"), "scheduler.chunk_size=0"))


def test_unknown_component_option_names_valid_options(checkpoint_factory) -> None:
    with pytest.raises(ConfigError, match="cache.page_size: not an option of cache 'none'"):
        Engine.from_overrides(overrides(checkpoint_factory("tiny-olmoe"), "cache=none", "+cache.page_size=4"))


def test_bad_device_and_dtype_fail_at_start(checkpoint_factory) -> None:
    path = checkpoint_factory("tiny-olmoe")
    with pytest.raises(ConfigError, match="dtype: unknown choice 'float8'"):
        Engine.from_overrides(overrides(path, "dtype=float8"))
    with pytest.raises(ConfigError, match="device"):
        Engine.from_overrides(overrides(path, "device=tpu"))


def test_empty_prompt_is_rejected_alone(engine: Engine) -> None:
    outs = engine.generate(["", "hello"], SamplingParams(max_new_tokens=3))
    assert outs[0].finish_reason == "error" and "empty" in outs[0].error
    assert outs[1].finish_reason == "length" and len(outs[1].token_ids) == 3


def test_prompt_longer_than_context_is_rejected(engine: Engine) -> None:
    too_long = [5] * engine.built.max_context
    with pytest.raises(RequestError, match="context"):
        engine.add_request(too_long, SamplingParams())


@pytest.mark.parametrize("bad", [0, -3])
def test_max_new_tokens_below_one_is_rejected(engine: Engine, bad: int) -> None:
    with pytest.raises(RequestError, match="max_new_tokens"):
        engine.add_request("hi", SamplingParams(max_new_tokens=bad))


def test_generation_stops_at_the_context_limit(checkpoint_factory) -> None:
    engine = Engine.from_overrides(overrides(checkpoint_factory("tiny-olmoe"), "model.max_context=12"))
    out = engine.generate([[3] * 10], SamplingParams(max_new_tokens=50, ignore_eos=True))[0]
    assert out.finish_reason == "length"
    assert 10 + len(out.token_ids) == 12


def test_cli_bad_choice_fails_in_one_line() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "moeframe.run", "-m", "router=top1,top9"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and "router: unknown choice 'top9'; valid choices:" in lines[-1]


def test_dotted_and_valid_overrides_pass_the_choice_check() -> None:
    from moeframe.config import unknown_group_choice

    assert unknown_group_choice(["router=top2", "router.k=3", "cache=radix,paged", "+workload.x=1", "seed=3"]) is None
    assert "cache: unknown choice 'lru'" in unknown_group_choice(["cache=radix,lru"])


def test_cli_misspelt_key_fails_in_one_line_naming_the_valid_keys() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "moeframe.run", "cache.max_tokenz=5"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: cache.max_tokenz: not a key of cache 'radix'; valid keys: eviction, max_tokens, mem_fraction, name, page_size"
    ]


def test_misspelt_keys_are_named_in_every_kind_of_section() -> None:
    from moeframe.config import override_problem

    def named(problem: str, head: str, *valid: str) -> bool:
        keys = problem.split("; valid keys: ")[1].split(", ")
        return problem.startswith(head) and all(v in keys for v in valid) and keys == sorted(keys)

    assert named(override_problem(["devicee=cpu"]), "devicee: not a config key", "device", "cache", "seed")
    assert named(override_problem(["runner.atention=torch"]), "runner.atention: not a key of runner", "attention")
    assert named(override_problem(["model.presett=x"]), "model.presett: not a key of model", "preset", "path")
    # a sweep's every choice of the group must have the key
    assert named(override_problem(["cache=paged,radix", "cache.block_size=4"]), "cache.block_size: not a key of cache 'radix'", "page_size")
    assert named(override_problem(["workload=tree", "workload.num_requestz=2"]), "workload.num_requestz: not a key of workload 'tree'", "depth")


def test_valid_keys_added_keys_and_reruns_pass_the_key_check() -> None:
    from moeframe.config import override_problem

    ok = ["cache=paged", "cache.block_size=4", "runner.overlap=false", "model.random_weights=true", "seed=3",
          "+workload.x=1", "hydra.run.dir=/tmp/x", "workload.num_requests=2"]  # fmt: skip
    assert override_problem(ok) is None
    assert override_problem(["--config-dir", "/tmp/run", "--config-name", "config", "cache.block_size=4"]) is None
    with pytest.raises(ConfigError, match=r"^cache.max_tokenz: not a key of cache 'radix'"):
        compose_config(["cache.max_tokenz=5"])


def test_triton_attention_on_cpu_without_the_interpreter_is_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from moeframe.config import validate

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match=r"^runner.attention: Triton kernels need a CUDA device, and this run's device is cpu"):
        validate(compose_config(["device=cpu", "runner.attention=triton"]))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    validate(compose_config(["device=cpu", "runner.attention=triton"]))
