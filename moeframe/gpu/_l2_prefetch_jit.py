"""The device side of l2_prefetch.py: one program's share of a byte range, prefetched into L2 line by line.

Kept apart because Triton decides between compiling and interpreting when a
jit function is defined; the interpreter cannot run the inline PTX, so
callers take it only under a constexpr that the host sets on CUDA alone.
"""

import triton
import triton.language as tl

# The L2 line the prefetch instruction brings in, in bytes.
LINE_BYTES = tl.constexpr(128)


@triton.jit
def share_of_lines(num_bytes, part, num_parts):
    """[lo, hi): the 128-byte lines of a ``num_bytes`` range that part ``part`` of ``num_parts`` prefetches."""
    lines = tl.cdiv(num_bytes, LINE_BYTES)
    per_part = tl.cdiv(lines, num_parts)
    lo = tl.minimum(part * per_part, lines)
    return lo, tl.minimum(lo + per_part, lines)


@triton.jit
def prefetch_lines_to_l2(base_ptr, num_bytes, part, num_parts, LINES: tl.constexpr, EVICT_LAST: tl.constexpr = True):
    """Issue ``prefetch.global.L2`` for this part's lines of [base_ptr, base_ptr + num_bytes).

    ``EVICT_LAST``: with the ``L2::evict_last`` priority (lines that must
    outlive a weight stream); else the normal one (lines read within the same
    launch). Parts at or past ``num_parts`` prefetch nothing. Fire and
    forget: the instruction waits for nothing, so the program goes on (to its
    PDL wait) while the lines stream in.
    """
    lo, hi = share_of_lines(num_bytes, part, num_parts)
    base = base_ptr.to(tl.pointer_type(tl.int8))
    for start in range(lo, hi, LINES):
        # lanes past the share prefetch its last line again: harmless, and no mask is needed
        line = tl.minimum(start + tl.arange(0, LINES), hi - 1)
        address = base + line.to(tl.int64) * LINE_BYTES
        if EVICT_LAST:
            tl.inline_asm_elementwise(
                "prefetch.global.L2::evict_last [$1];\n\tmov.u32 $0, 0;", "=r,l", [address], dtype=tl.int32,
                is_pure=False, pack=1,
            )  # fmt: skip
        else:
            tl.inline_asm_elementwise(
                "prefetch.global.L2 [$1];\n\tmov.u32 $0, 0;", "=r,l", [address], dtype=tl.int32, is_pure=False, pack=1
            )
