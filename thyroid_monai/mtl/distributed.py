"""Data-parallel training with gradient methods: local per-task gradients, one all-reduce.

DistributedDataParallel averages gradients during ``backward``; per-task backward passes would
then synchronise every task's gradient (and ``torch.autograd.grad`` bypasses DDP's hooks
altogether). Instead the trainer runs forward and the gradient method under
:func:`local_gradients`, and afterwards :func:`all_reduce_gradients` averages the combined
gradient of every optimised parameter in one collective call. Each rank thus aggregates its own
batch; the ranks then step with the same averaged gradient and stay identical.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


def is_data_parallel(network: torch.nn.Module) -> bool:
    """True for a DistributedDataParallel-wrapped network in an initialised process group."""
    return (
        isinstance(network, DistributedDataParallel)
        and dist.is_available()
        and dist.is_initialized()
    )


@contextlib.contextmanager
def local_gradients(network: torch.nn.Module) -> Iterator[None]:
    """Forward and backward passes inside this context do not synchronise gradients under DDP."""
    if isinstance(network, DistributedDataParallel):
        with network.no_sync():
            yield
    else:
        yield


def all_reduce_gradients(params: Sequence[torch.Tensor]) -> None:
    """Averages the ``.grad`` of ``params`` over the ranks, in one flat all-reduce.

    Every rank must pass the same parameters in the same order (those of the optimiser). A missing
    gradient counts as zeros and is written back, so that every rank steps the same parameters.
    Does nothing outside an initialised process group of more than one rank.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    trainable = [p for p in params if p.requires_grad]
    if not trainable:
        return
    flat = torch.cat(
        [(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).float() for p in trainable]
    )
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for p in trainable:
        p.grad = flat[offset : offset + p.numel()].view_as(p).to(p.dtype).clone()
        offset += p.numel()


def average_buffers(module: torch.nn.Module) -> int:
    """Averages the floating-point buffers of ``module`` over the ranks (BatchNorm statistics).

    The trainer's forward passes run under ``no_sync``, where DistributedDataParallel does not
    broadcast buffers, so each rank's running statistics follow its own batches. Averaging them
    makes every rank hold the same model again (integer buffers such as ``num_batches_tracked``
    already agree). Does nothing outside an initialised process group of more than one rank.

    Returns:
        How many buffers were averaged.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return 0
    buffers = [b for b in module.buffers() if b.is_floating_point()]
    if not buffers:
        return 0
    flat = torch.cat([b.reshape(-1).float() for b in buffers])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= dist.get_world_size()
    offset = 0
    for buffer in buffers:
        buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
        offset += buffer.numel()
    return len(buffers)
