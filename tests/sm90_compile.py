"""Run a script that compiles Triton kernels for an H100 (sm_90) without a GPU, in a process free of the interpreter.

Kernel tests check what their kernels become on the GPU (griddepcontrol for
PDL, atomics, vector loads before a wait) by printing facts about the PTX;
TRITON_INTERPRET, which the suite sets, must be unset for Triton to compile.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import triton


def compile_for_sm90(script: str, *args: str) -> str:
    """The standard output of ``script`` (``args`` in its sys.argv[1:]), run by this Python without TRITON_INTERPRET;
    fails the test if it fails."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def counted_on_triton(version: str) -> pytest.MarkDecorator:
    """Skip a test whose PTX counts (barriers, loads) were read from the Triton release ``version`` (major.minor)
    on any other release: its code generator moves such counts (Triton 3.6 emits 12 barriers where 3.9 emits 10
    for the same top-k), so elsewhere the count says nothing about the kernel."""
    running = ".".join(triton.__version__.split(".")[:2])
    return pytest.mark.skipif(running != version, reason=f"PTX counts read from Triton {version}, running {running}")
