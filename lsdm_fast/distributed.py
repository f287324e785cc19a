"""torch.distributed support (launch with torchrun; gloo on CPU, nccl on GPUs).

Data split: every rank draws the same *global* batch from the same seeded generator and keeps
rows rank::world of it. Each rank's loss is a mean over its shard, and the shards have equal
sizes, so the average of the ranks' gradients is exactly the gradient of the global batch's
loss: a run on W processes matches a one-process run with the same global batch up to float
rounding. Gradients are averaged with one all_reduce per optimiser step, by hand rather than by
wrapping in DistributedDataParallel, because the critic's gradients come from the fused critic
op, not from autograd (DDP's hooks would never fire for them); the generator and autoencoder use
the same path so that every update is averaged the same way.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def rank_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_world()[0] == 0


def shard(t: torch.Tensor) -> torch.Tensor:
    """This rank's rows (rank::world) of a global batch."""
    rank, world = rank_world()
    return t if world == 1 else t[rank::world]


def check_batch(batch_size: int, what: str) -> None:
    _, world = rank_world()
    if batch_size % world:
        raise ValueError(f"{what}={batch_size} must be divisible by the number of processes ({world}): "
                         f"every process takes an equal share of each global batch; try "
                         f"{max(world, batch_size // world * world)}")


def average(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Average the tensors over ranks (one all_reduce); identity on one process."""
    _, world = rank_world()
    if world == 1 or not tensors:
        return tensors
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= world
    out, i = [], 0
    for t in tensors:
        out.append(flat[i:i + t.numel()].reshape(t.shape).to(t.dtype))
        i += t.numel()
    return out


def barrier() -> None:
    if rank_world()[1] > 1:
        dist.barrier()


def average_into(grads: list[torch.Tensor], *scalars: torch.Tensor) -> list[torch.Tensor]:
    """Average `grads` over ranks in place and return the averaged `scalars` (one all_reduce in all);
    identity on one process."""
    *avg, = average(list(grads) + [s.detach().reshape(-1).float() for s in scalars])
    if rank_world()[1] > 1:
        for g, a in zip(grads, avg):
            g.copy_(a)
    return avg[len(grads):]
