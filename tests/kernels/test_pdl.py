"""PDL launch arguments, and the contract of every kernel launched with them (moeframe/gpu/pdl.py).

A kernel launched with PDL that reads or writes before ``pdl_wait`` races the
kernel before it; the contract is checked on the source of every kernel that
takes ``USE_PDL``, and one kernel is compiled for sm_90 in a process without the
interpreter to show the wait becomes griddepcontrol instructions.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import torch

import moeframe
from moeframe.gpu import pdl

PACKAGE = Path(moeframe.__file__).parent


def jit_functions_taking_use_pdl() -> list[tuple[str, ast.FunctionDef]]:
    found = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and any(a.arg == "USE_PDL" for a in node.args.args):
                found.append((f"{path.relative_to(PACKAGE)}:{node.name}", node))
    return found


def is_pdl_wait(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Call)
        and getattr(stmt.value.func, "id", None) == "pdl_wait"
        and [getattr(a, "id", None) for a in stmt.value.args] == ["USE_PDL"]
    )


def test_every_pdl_kernel_waits_before_its_first_statement() -> None:
    kernels = [(name, fn) for name, fn in jit_functions_taking_use_pdl() if name != "gpu/_pdl_jit.py:pdl_wait"]
    assert len(kernels) >= 6
    for name, fn in kernels:
        body = fn.body[1:] if isinstance(fn.body[0], ast.Expr) and isinstance(fn.body[0].value, ast.Constant) else fn.body
        assert is_pdl_wait(body[0]), f"{name} must call pdl_wait(USE_PDL) first"


def test_pdl_is_off_on_the_cpu() -> None:
    assert pdl.pdl_args(torch.zeros(1)) == {"USE_PDL": False}


def test_pdl_is_off_under_the_interpreter(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not pdl.pdl_supported(torch.device("cuda", 0))


COMPILE_GATE_KERNEL = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from moeframe.routers._gate_kernel import gate_gemv_kernel
sig = {n: t for n, t in zip(gate_gemv_kernel.arg_names, ["*bf16", "*fp32", "*fp32"] + ["i32"] * 5 + ["constexpr"] * 3)}
for use_pdl in (False, True):
    src = ASTSource(fn=gate_gemv_kernel, signature=sig, constexprs={"BLOCK_T": 1, "BLOCK_H": 1024, "USE_PDL": use_pdl})
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"launch_pdl": use_pdl}).asm["ptx"]
    print(use_pdl, "griddepcontrol.wait" in ptx, "griddepcontrol.launch_dependents" in ptx)
"""


def test_the_wait_compiles_to_griddepcontrol_for_sm90() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", COMPILE_GATE_KERNEL], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["False False False", "True True True"]
