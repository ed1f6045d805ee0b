"""norm.py's add_rms_norm, rounding for rounding, as Triton jit helpers for kernels that fold the norm in.

The qkv GEMV (_gemv_kernel.py) and the router's gate top-k launch
(routers/_gate_kernel.py) both run the RMSNorm before them inside their own
programs; both round where norm.py rounds: the residual sum to the
activations' dtype, the normed row (float32 times the reciprocal rms) to the
dtype, its product with the norm weight to the dtype. Imported with those
kernels, lazily: Triton decides at decoration time whether to compile or
interpret a jit function.
"""

import triton
import triton.language as tl


@triton.jit
def summed_rows(x_ptr, res_ptr, rows, cols, mask, stride_xr, stride_xc, stride_rr, stride_rc, HAS_RESIDUAL: tl.constexpr):
    """x[rows, cols] (+ residual[rows, cols] with HAS_RESIDUAL, summed in the activations' dtype as torch adds them)."""
    x = tl.load(x_ptr + rows[:, None] * stride_xr + cols[None, :] * stride_xc, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        x += tl.load(res_ptr + rows[:, None] * stride_rr + cols[None, :] * stride_rc, mask=mask, other=0.0)
    return x


@triton.jit
def rms_normed(total, inv_rms, norm_w_ptr, cols, col_ok):
    """The normed rows of ``total`` [rows, cols] given their float32 1 / rms, in total's dtype, as norm.py rounds them."""
    norm_w = tl.load(norm_w_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)
    return rms_normed_by(total, inv_rms, norm_w)


@triton.jit
def rms_normed_by(total, inv_rms, norm_w):
    """``rms_normed`` with the norm weight [cols] already loaded (float32), e.g. before a kernel's PDL wait."""
    dtype = total.dtype
    normed = (total.to(tl.float32) * inv_rms[:, None]).to(dtype).to(tl.float32)
    return (norm_w[None, :] * normed).to(dtype)
