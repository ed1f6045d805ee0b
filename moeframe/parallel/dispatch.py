"""Expert-parallel token exchange for one MoE layer: dispatch by all-to-all, compute locally, combine back.

Every rank holds the same hidden states and routing plan (attention is
replicated), so rank r takes only its contiguous share of the tokens, sends
each of their kept assignments to the rank holding the chosen expert replica,
and gets the expert outputs back, the two-all-to-all scheme of GShard
(Lepikhin et al., 2020) and DeepSpeed-MoE. Per-slot counts travel first, so
both sides know the uneven split sizes (here every rank could derive them
from the shared plan, but the exchange keeps this code right for
data-parallel attention, where it cannot); weights are applied at the origin,
in float32. A final all-gather gives every rank the whole layer output again.
Replicas of an expert split its tokens round-robin by token index, the same
choice on every rank. Expert outputs travel back in the activation dtype, so
in bfloat16 each is rounded before weighting (single's kernel weights first):
a difference at bf16 rounding level.
"""

from __future__ import annotations

import torch

from moeframe.experts.base import ExpertsKernel
from moeframe.parallel.comm import Comm
from moeframe.parallel.placement import LayerPlacement
from moeframe.parallel.tp_layers import shard_range
from moeframe.routers.plan import RoutingPlan


class SlotTables:
    """Placement as device tensors: expert -> replica slots, slot -> rank."""

    def __init__(self, placement: LayerPlacement, device: torch.device) -> None:
        replicas = placement.replicas()
        width = max(len(r) for r in replicas)
        padded = [r + r[:1] * (width - len(r)) for r in replicas]
        self.replica_slots = torch.tensor(padded, dtype=torch.long, device=device)  # [E, max replicas]
        self.num_replicas = torch.tensor([len(r) for r in replicas], dtype=torch.long, device=device)
        ranks = [rank for rank, n in enumerate(placement.slots_per_rank) for _ in range(n)]
        self.slot_rank = torch.tensor(ranks, dtype=torch.long, device=device)  # [P]

    def slots_of(self, topk_ids: torch.Tensor) -> torch.Tensor:
        """[T, k] global slot of each assignment (-1 where dropped)."""
        experts = topk_ids.clamp_min(0)
        token = torch.arange(topk_ids.shape[0], device=topk_ids.device)[:, None]
        choice = token % self.num_replicas[experts]
        return torch.where(topk_ids >= 0, self.replica_slots[experts, choice], -1)


class ExpertParallelRunner:
    """``comm`` spans the expert-parallel group; ``tp_comm``, when experts are also width-sharded, the TP group."""

    def __init__(self, placement: LayerPlacement, comm: Comm, rank_load: torch.Tensor, tp_comm: Comm | None = None) -> None:
        self.placement, self.comm, self.tp_comm = placement, comm, tp_comm
        self.rank = comm.rank
        self.rank_load = rank_load  # [W] int64, tokens each rank computed in this layer (a row of the strategy's table)
        self.slots_per_rank = placement.slots_per_rank
        self._tables: SlotTables | None = None

    def tables(self, device: torch.device) -> SlotTables:
        if self._tables is None:
            self._tables = SlotTables(self.placement, device)
        return self._tables

    def run_experts(
        self, hidden: torch.Tensor, w13: torch.Tensor, w2: torch.Tensor, plan: RoutingPlan, kernel: ExpertsKernel
    ) -> torch.Tensor:
        world, num_tokens, top_k = self.placement.world_size, plan.topk_ids.shape[0], plan.topk_ids.shape[1]
        tables = self.tables(hidden.device)
        slots = tables.slots_of(plan.topk_ids)
        kept_slots = slots[slots >= 0]
        self.rank_load += torch.bincount(tables.slot_rank[kept_slots], minlength=world).to(self.rank_load.device)

        shares = [shard_range(num_tokens, world, r) for r in range(world)]
        lo, hi = shares[self.rank]
        my_slots = slots[lo:hi].reshape(-1)
        num_slots = sum(self.slots_per_rank)
        order = torch.sort(torch.where(my_slots >= 0, my_slots, num_slots), stable=True).indices
        slot_counts = torch.bincount(my_slots[my_slots >= 0], minlength=num_slots)
        num_local = self.slots_per_rank[self.rank]
        recv_counts = self.comm.all_to_all(slot_counts, self.slots_per_rank, [num_local] * world, kind="counts")
        send_rows = torch.zeros(world, dtype=torch.long, device=hidden.device).index_add_(0, tables.slot_rank, slot_counts)
        recv_rows = recv_counts.view(world, num_local).sum(dim=1)
        splits = torch.cat([send_rows, recv_rows]).tolist()
        send_splits, recv_splits = splits[:world], splits[world:]

        rows = order[: sum(send_splits)]
        token_of_row = rows // top_k
        received = self.comm.all_to_all(hidden[lo:hi][token_of_row], send_splits, recv_splits, kind="dispatch")
        local_ids = torch.repeat_interleave(torch.arange(num_local, device=hidden.device).repeat(world), recv_counts)
        if received.shape[0] > 0:
            ones = torch.ones(received.shape[0], 1, dtype=torch.float32, device=hidden.device)
            expert_out = kernel.forward(received, w13, w2, RoutingPlan(local_ids[:, None], ones))
        else:
            expert_out = received
        returned = self.comm.all_to_all(expert_out, recv_splits, send_splits, kind="combine")

        weights = plan.topk_weights[lo:hi].reshape(-1)[rows].float()
        mine = torch.zeros(hi - lo, hidden.shape[1], dtype=torch.float32, device=hidden.device)
        mine.index_add_(0, token_of_row, returned.float() * weights[:, None])
        out = self.comm.all_gather_rows(mine.to(hidden.dtype), [b - a for a, b in shares])
        # with width-sharded experts each rank holds its slice's partial sum: add the slices up
        return out if self.tp_comm is None else self.tp_comm.all_reduce(out)
