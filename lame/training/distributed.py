"""Multi-process training under torchrun (DistributedDataParallel semantics).

Every helper is a no-op in a single process, so the single-process path is unchanged.
We all-reduce gradients ourselves instead of wrapping the model in ``DistributedDataParallel``:
one LaME step runs the model several times (queries, targets, hard negatives) and calls the
decoder head directly, which DDP's one-forward-per-backward hooks do not fit; averaging the
gradients after ``backward`` is exactly what DDP computes.

InfoNCE negatives span the global batch: target embeddings are gathered from every rank with a
differentiable all-gather (as VLM2Vec does), so gradients reach the rank that computed them.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

_DEVICE = torch.device("cpu")  # where collective buffers live (NCCL needs them on the GPU)


def setup(device: torch.device | str = "cpu") -> None:
    """Join the process group torchrun describes (WORLD_SIZE/RANK/MASTER_*), if any: NCCL when
    this process trains on a GPU (made its current device first), gloo on CPUs."""
    global _DEVICE
    _DEVICE = torch.device(device)
    if _DEVICE.type == "cuda":
        torch.cuda.set_device(_DEVICE)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not is_initialized():
        dist.init_process_group("nccl" if _DEVICE.type == "cuda" else "gloo")


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows (rank order), keeping the autograd graph."""
    if world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(tensor.contiguous()), dim=0)


def average_gradients(params) -> None:
    if world_size() == 1:
        return
    for param in params:
        if param.grad is not None:
            dist.all_reduce(param.grad)
            param.grad /= world_size()


def average_scalars(values: dict[str, float]) -> dict[str, float]:
    if world_size() == 1:
        return values
    names = sorted(values)
    tensor = torch.tensor([values[n] for n in names], dtype=torch.float64, device=_DEVICE)
    dist.all_reduce(tensor)
    return {n: float(v) / world_size() for n, v in zip(names, tensor.cpu())}


def per_rank_share(count: int) -> float:
    """Global ``count`` / world size: the denominator that makes the ranks' averaged losses
    equal the global mean over items of uneven per-rank numbers (e.g. answer tokens)."""
    if world_size() == 1:
        return float(count)
    tensor = torch.tensor([float(count)], dtype=torch.float64, device=_DEVICE)
    dist.all_reduce(tensor)
    return float(tensor.cpu()) / world_size()


def broadcast_parameters(module: torch.nn.Module) -> None:
    """Start every rank from rank 0's weights."""
    if world_size() == 1:
        return
    for value in module.state_dict().values():
        dist.broadcast(value, src=0)


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def local_slice(batch_size: int) -> slice:
    """This rank's contiguous share of a global batch."""
    world = world_size()
    if batch_size % world:
        raise ValueError(f"batch_size {batch_size} must be divisible by the number of processes ({world})")
    share = batch_size // world
    return slice(rank() * share, (rank() + 1) * share)
