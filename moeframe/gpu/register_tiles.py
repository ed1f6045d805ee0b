"""How many whole weight rows one program of a prefetching kernel holds in registers.

The decode-sized weight streams (model/layers/_prefetch_gemv_kernel.py,
experts/_down_prefetch_kernel.py, experts/_gate_up_gemv_kernel.py) issue every
load of a program's tile at once instead of walking K in a pipeline: a tile
of ``BLOCK_N`` whole rows, each padded to a power of two (Triton's block
shapes), within a byte budget that keeps several programs resident per SM.
"""

from __future__ import annotations

import torch
import triton

# The widest tile in rows: beyond it a program's reduction outweighs its loads.
MAX_ROWS = 64


def whole_rows(row_elements: int, dtype: torch.dtype, tile_bytes: int, rows_per_block_row: int = 1) -> int | None:
    """The most rows, a power of two up to ``MAX_ROWS``, whose padded rows fit ``tile_bytes``; None if one does not.

    ``rows_per_block_row``: weight rows each tile row stands for (2 where a
    program holds a gate row and its up row).
    """
    row_bytes = rows_per_block_row * triton.next_power_of_2(row_elements) * (torch.finfo(dtype).bits // 8)
    if row_bytes > tile_bytes:
        return None
    return min(MAX_ROWS, 1 << (tile_bytes // row_bytes).bit_length() - 1)
