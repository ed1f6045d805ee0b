"""Cutting full checkpoint tensors to a rank's shard as they are loaded, never holding the whole model on a device.

A strategy shards the model while it is still on the meta device: every
parameter it replaces is made by ``cut``, which records the (dim, index)
steps taken from the full tensor on the new parameter. ``WeightSlicer``
collects those steps by parameter name, and the loader applies them to each
full tensor on the host before moving it to the device, the way vLLM's
per-parameter weight loaders narrow a checkpoint tensor to the local shard.
Parts of the model another rank holds (a pipeline stage's layers) are listed
by name prefix in ``elsewhere``: the slicer returns None for their tensors and
the loader drops them as they are read (vLLM's PP skips those weights alike).
"""

from __future__ import annotations

import torch
from torch import nn

Steps = list[tuple[int, torch.Tensor]]


def frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous(), requires_grad=False)


def cut(param: torch.Tensor, dim: int, index: torch.Tensor) -> nn.Parameter:
    """The rows ``index`` of ``param`` along ``dim``, remembering the cut for the loader."""
    index = index.to(torch.long).cpu()
    out = frozen(param.data.index_select(dim, index.to(param.device)))
    out.shard_steps = [*getattr(param, "shard_steps", []), (dim, index)]
    return out


class WeightSlicer:
    """name -> the cuts that take the full tensor of that name to this rank's shard (None: another rank's)."""

    def __init__(self, steps: dict[str, Steps], elsewhere: tuple[str, ...] = ()) -> None:
        self.steps = steps
        self.elsewhere = elsewhere

    @classmethod
    def of(cls, model: nn.Module, elsewhere: tuple[str, ...] = ()) -> "WeightSlicer":
        steps = {name: p.shard_steps for name, p in model.named_parameters() if hasattr(p, "shard_steps")}
        return cls(steps, elsewhere)

    def __call__(self, name: str, tensor: torch.Tensor) -> torch.Tensor | None:
        if name.startswith(self.elsewhere):
            return None
        for dim, index in self.steps.get(name, []):
            if dim >= tensor.dim() or (index.numel() and int(index.max()) >= tensor.shape[dim]):
                return tensor  # not the full shape the model expects: the loader's shape check reports it
            tensor = tensor.index_select(dim, index.to(tensor.device))
        return tensor
