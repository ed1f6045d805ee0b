"""Joining the process group a launcher set up: torchrun's env vars in, (rank, world size) out.

The backend follows the device, as torchtitan and SGLang choose it: NCCL
between GPUs, gloo between CPU processes (gloo's ``all_to_all_single`` takes
uneven splits, which the expert dispatch needs). Each CUDA rank binds to its
``LOCAL_RANK`` GPU, so a config saying ``device=cuda`` means "my GPU".
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from moeframe.errors import ConfigError


@dataclass(frozen=True)
class WorldInfo:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def init_distributed(device: torch.device) -> WorldInfo:
    """Join (or reuse) the default process group; a single process without launcher env is a world of one."""
    if dist.is_available() and dist.is_initialized():
        return WorldInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return WorldInfo(0, 1, 0)
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise ConfigError(f"parallel: WORLD_SIZE={world_size} but {', '.join(missing)} unset; launch with torchrun --nproc-per-node N")
    local_rank = int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if device.type == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend_for(device), rank=int(os.environ["RANK"]), world_size=world_size)
    atexit.register(dist.destroy_process_group)
    return WorldInfo(dist.get_rank(), world_size, local_rank)


def launch_rank() -> int:
    """This process's rank as the launcher set it (0 without torchrun), readable before any group exists."""
    return int(os.environ.get("RANK", "0"))



def grid_groups(world_size: int, tp_size: int) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup | None]:
    """This rank's (tensor-parallel, expert-parallel) groups of a [world/tp, tp] grid of ranks.

    Consecutive ranks form a TP group (on one node, as Megatron-LM orders
    them); ranks with the same position in their TP group form an EP group.
    None stands for the default (whole-world) group. Every rank creates every
    group, in the same order, as torch.distributed requires.
    """
    if world_size == 1 or tp_size == 1:
        return None, None
    tp_groups = [list(range(start, start + tp_size)) for start in range(0, world_size, tp_size)]
    ep_groups = [list(range(offset, world_size, tp_size)) for offset in range(tp_size)]
    tp_group, _ = dist.new_subgroups_by_enumeration(tp_groups)
    ep_group, _ = dist.new_subgroups_by_enumeration(ep_groups)
    return tp_group, ep_group
