"""The device side of pdl.py: wait for the previous grid, then let the next one launch.

Kept apart from pdl.py because Triton decides between compiling and
interpreting (TRITON_INTERPRET) when a jit function is defined, so kernel
modules import it lazily, as they are imported themselves.
"""

import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def pdl_wait(USE_PDL: tl.constexpr):
    if USE_PDL:
        gdc_wait()
        gdc_launch_dependents()
