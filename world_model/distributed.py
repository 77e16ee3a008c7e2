"""Several training processes (torchrun) on one model: torch.distributed, nothing of our own.

``torchrun --nproc_per_node N -m robot_runtime.cli train world-model ...`` starts N copies of
the command; torchrun sets RANK, WORLD_SIZE and LOCAL_RANK (and the rendezvous address) in
their environments. Each copy joins one process group (gloo on the CPU, nccl on CUDA), wraps
its model in DistributedDataParallel, samples its own shard of the episodes with its own seed,
and rank 0 alone logs and writes checkpoints. DDP averages the gradients of the N processes, so
one synchronised update is the update of one process on the N batches together with the mean
loss: the effective batch is N x batch_size sequences at the same learning rate.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place in the group (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_environment() -> Distributed:
    """The RANK / WORLD_SIZE / LOCAL_RANK torchrun sets; one process without them. Malformed
    values are a one-line ValueError."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise ValueError(f"torchrun's RANK/WORLD_SIZE/LOCAL_RANK are not integers: {e}") from e
    if world < 1 or not 0 <= rank < world or local_rank < 0:
        raise ValueError(f"RANK {rank} / WORLD_SIZE {world} / LOCAL_RANK {local_rank} invalid")
    return Distributed(rank, world, local_rank)


def init(ctx: Distributed, device: torch.device) -> None:
    """Joins the process group torchrun set up (no-op for one process)."""
    if not ctx.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend, rank=ctx.rank, world_size=ctx.world)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap(module: torch.nn.Module, ctx: Distributed, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around ``module`` (which must compute the loss in forward);
    the module itself when alone. DDP broadcasts rank 0's weights at construction, so every
    process starts from the same model."""
    if not ctx.enabled:
        return module
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    # The model's buffers are constants (bins, offsets): no need to sync them every forward.
    # torch 2.13 renamed broadcast_buffers to forward_sync_buffers.
    params = inspect.signature(DistributedDataParallel.__init__).parameters
    no_sync: dict[str, Any] = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in params
        else {"broadcast_buffers": False}
    )
    return DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None, **no_sync
    )


def mean_over_ranks(values: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    """The mean of a tensor over the processes (for logging metrics of the whole batch)."""
    if not ctx.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values / ctx.world


def barrier(ctx: Distributed) -> None:
    if ctx.enabled:
        dist.barrier()
