"""torch.distributed set-up for runs started with ``torchrun`` (gloo on CPU, nccl on GPU), and the one
all-reduce helper the losses and the engine share."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group if ``torchrun`` started us (``WORLD_SIZE`` > 1); otherwise single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world_size=world, local_rank=local)


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(value: float | torch.Tensor, device: torch.device | str = "cpu") -> float | torch.Tensor:
    """The mean of a scalar over the ranks of the process group (the value itself when not distributed).

    GLIP normalises its losses by positives counted over all GPUs; every such reduction goes through here. A
    tensor stays on its device (detached, no host sync); a float comes back as a float.
    """
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if dist.is_available() and dist.is_initialized():
            value = value.clone()
            dist.all_reduce(value)
            value = value / dist.get_world_size()
        return value
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a ``DistributedDataParallel`` wrapper (the model itself when not wrapped)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
