"""PDL launch arguments, and the contract of every kernel launched with them (moeframe/gpu/pdl.py).

A kernel launched with PDL that writes, or reads what the kernel before it
writes, before ``pdl_wait`` races that kernel. The part of the contract a
source can show (one wait, at the top level, no store or atomic before it) is
checked on every kernel that takes ``USE_PDL``; one kernel is compiled for
sm_90 in a process without the interpreter to show the wait becomes
griddepcontrol instructions.
"""

from __future__ import annotations

import ast
from pathlib import Path

import torch
from sm90_compile import compile_for_sm90

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


def writes(stmt: ast.stmt) -> list[str]:
    """Names of the store and atomic calls inside ``stmt``."""
    calls = (n for n in ast.walk(stmt) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute))
    return [c.func.attr for c in calls if c.func.attr == "store" or c.func.attr.startswith("atomic_")]


def test_every_pdl_kernel_waits_once_before_any_store() -> None:
    wait_helpers = ("gpu/_pdl_jit.py:pdl_wait",)
    kernels = [(name, fn) for name, fn in jit_functions_taking_use_pdl() if name not in wait_helpers]
    assert len(kernels) >= 6
    for name, fn in kernels:
        waits = [i for i, stmt in enumerate(fn.body) if is_pdl_wait(stmt)]
        assert len(waits) == 1, f"{name} must call pdl_wait(USE_PDL) once, at the top level of its body"
        before = [w for stmt in fn.body[: waits[0]] for w in writes(stmt)]
        assert not before, f"{name} writes ({before}) before pdl_wait"


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
    stdout = compile_for_sm90(COMPILE_GATE_KERNEL)
    assert stdout.split("\n")[:2] == ["False False False", "True True True"]
