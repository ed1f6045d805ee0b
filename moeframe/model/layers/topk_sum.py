"""The MoE output with its top-k sum not yet taken: the k weighted assignment rows of each token, summed by their reader.

The fused MoE's down projection writes one row per (token, assignment),
[T, k, H], and a short kernel sums each token's k rows; at decode sizes that
sum is a launch of its own (2 us a layer on an H100, most of it launch
latency). The next kernel to read the MoE output, the residual add + RMSNorm
that opens the next layer (or the model's final norm), reads a [T, H] row
anyway; reading the k rows instead and summing them there removes the
launch. vLLM and SGLang sum inside the MoE (moe_sum, or the down GEMM's
epilogue); deferring the sum to the consumer's prologue is the same move as
the residual add folded into the next norm (vLLM's fused_add_rms_norm).

A ``PendingTopkSum`` is what an expert kernel hands back in place of [T, H]
(``ExpertsKernel.forward_unreduced``); whoever reads a layer's output either
passes it to ``RMSNorm.add_forward``, which sums it in its own kernel, or calls
``reduced`` for a plain tensor. Either way the numbers are those of
``sum_assignments`` then the add: ``assignment_total`` says how.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moeframe.model.layers.fusion import fused_on_cuda

# The dtypes whose sum the consumer can round exactly as a stored tensor is rounded
# inside a compiled kernel (see round_as_stored); a float16 MoE sums in its own launch.
DEFERRABLE_DTYPES = (torch.bfloat16, torch.float32)


@fused_on_cuda
def sum_assignments(parts: torch.Tensor) -> torch.Tensor:
    """[T, k, H] -> [T, H], accumulated in float32, as one short generated kernel on CUDA."""
    return parts.sum(dim=1)


@dataclass(frozen=True)
class PendingTopkSum:
    """``sum_assignments(parts)`` (+ ``addend``), not yet computed: its reader sums it."""

    parts: torch.Tensor  # [T, k, H]: topk_weight * expert output of each assignment
    addend: torch.Tensor | None = None  # [T, H] added to the rounded sum, as MoEBlock adds its shared experts

    def __post_init__(self) -> None:
        if self.parts.dim() != 3:
            raise ValueError(f"parts must be [T, k, H], got {list(self.parts.shape)}")
        if self.parts.dtype not in DEFERRABLE_DTYPES:
            raise ValueError(f"a deferred top-k sum needs one of {DEFERRABLE_DTYPES}, got {self.parts.dtype}")
        if self.addend is not None and (self.addend.shape != self.summed_shape or self.addend.dtype != self.parts.dtype):
            raise ValueError(
                f"addend must be {list(self.summed_shape)} in {self.parts.dtype}, got {list(self.addend.shape)} in {self.addend.dtype}"
            )

    @property
    def summed_shape(self) -> torch.Size:
        return torch.Size((self.parts.shape[0], self.parts.shape[2]))

    def reduce(self) -> torch.Tensor:
        """The [T, H] tensor: ``sum_assignments`` (its own launch on CUDA), then the addend."""
        total = sum_assignments(self.parts)
        return total if self.addend is None else total + self.addend

    def __getitem__(self, rows: torch.Tensor) -> PendingTopkSum:
        """The pending sum of the tokens ``rows`` selects (the gather of the rows that get logits)."""
        return PendingTopkSum(self.parts[rows], None if self.addend is None else self.addend[rows])


MoEOutput = torch.Tensor | PendingTopkSum


def reduced(out: MoEOutput) -> torch.Tensor:
    """``out`` as a [T, H] tensor, summing a pending top-k sum in its own launch."""
    return out.reduce() if isinstance(out, PendingTopkSum) else out


def plus(out: MoEOutput, addend: torch.Tensor) -> MoEOutput:
    """``out + addend``, kept pending where ``out`` is (the add then runs after the sum, in its reader's kernel)."""
    if not isinstance(out, PendingTopkSum):
        return out + addend
    if out.addend is not None or addend.shape != out.summed_shape or addend.dtype != out.parts.dtype:
        return out.reduce() + addend
    return PendingTopkSum(out.parts, addend)


def assignment_total(parts: torch.Tensor, addend: torch.Tensor | None) -> torch.Tensor:
    """``PendingTopkSum(parts, addend).reduce()``, value for value, as ops a compiled reader fuses into its own kernel.

    Run eagerly (the CPU) it is the same ``parts.sum(dim=1)`` and add. Traced
    for Inductor (a reader under ``fused_on_cuda``) two things change, because
    Inductor would give a reduction over k a kernel of its own, and would drop
    the rounding to bfloat16 between fused ops that a stored tensor has: the k
    rows are summed as a pointwise chain in float32, in order, and each result
    is rounded to the dtype in integer bits (``round_as_stored``). For
    bfloat16 rows (8 significant bits) the float32 sum of k <= 8 of them is
    exact whatever the order unless their magnitudes span more than 2^13; only
    then can it differ from Inductor's own reduction order in its last bit,
    which changes the rounded value only near a tie. float32 rows can differ
    in the last bit more often.
    """
    if not torch.compiler.is_compiling():
        total = parts.sum(dim=1)
        return total if addend is None else total + addend
    acc = parts[:, 0].float()
    for j in range(1, parts.shape[1]):
        acc = acc + parts[:, j].float()
    total = round_as_stored(acc, parts.dtype)
    return total if addend is None else round_as_stored(total.float() + addend.float(), parts.dtype)


def round_as_stored(value: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float32 ``value`` rounded to ``dtype`` (round to nearest even), in a way Inductor keeps inside a fused kernel."""
    if dtype == torch.float32:
        return value
    if dtype != torch.bfloat16:
        raise ValueError(f"no in-kernel rounding to {dtype}: a deferred top-k sum needs one of {DEFERRABLE_DTYPES}")
    # bfloat16 is float32's top 16 bits: add half an ulp (less one where the kept last bit is even), clear the rest.
    bits = value.view(torch.int32)
    bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -0x10000
    rounded = torch.where(torch.isnan(value), value, bits.view(torch.float32))
    return rounded.to(dtype)
