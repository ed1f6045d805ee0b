"""experts=auto picks the fastest kernel that runs on the device; experts=triton without a GPU or interpreter says so in one line."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from moeframe.config import CONF_DIR
from moeframe.errors import ConfigError
from moeframe.experts import EXPERTS
from moeframe.experts.auto import kernel_name
from moeframe.experts.reference import ReferenceExperts
from moeframe.experts.triton_moe import TritonFusedMoE, TritonMoEParams

CPU = torch.device("cpu")


def auto_on(device: torch.device):
    return EXPERTS.build({"name": "auto"}, device=device)


def test_auto_on_cpu_is_the_reference_loop() -> None:
    kernel = auto_on(CPU)
    assert isinstance(kernel, ReferenceExperts) and kernel_name(kernel) == "reference"


def test_auto_on_cuda_is_the_triton_kernel_with_the_options_of_its_yaml() -> None:
    kernel = auto_on(torch.device("cuda"))  # building touches no GPU
    assert isinstance(kernel, TritonFusedMoE) and kernel_name(kernel) == "triton"
    yaml_params = EXPERTS.parse_params(OmegaConf.load(CONF_DIR / "experts" / "triton.yaml"))[1]
    assert yaml_params == TritonMoEParams()


def test_triton_on_cpu_without_the_interpreter_is_one_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError) as err:
        EXPERTS.build({"name": "triton"}, device=CPU)
    message = str(err.value)
    assert "\n" not in message and message.startswith("experts 'triton': Triton kernels need a CUDA device")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernel_name(EXPERTS.build({"name": "triton"}, device=CPU)) == "triton"
