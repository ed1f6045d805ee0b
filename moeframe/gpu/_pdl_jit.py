"""The device side of pdl.py: wait for the previous grid and let the next one launch, in either order.

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


@triton.jit
def pdl_launch_then_wait(USE_PDL: tl.constexpr):
    """``pdl_wait`` with the next grid let in first: it may start before this one's predecessor has finished.

    Only for a kernel whose successor loads nothing but weights before its own
    wait (pdl.py says why).
    """
    if USE_PDL:
        gdc_launch_dependents()
        gdc_wait()
