"""Data-parallel training: the handler that keeps the ranks on one model, and who writes."""

from __future__ import annotations

import torch
import torch.distributed as dist
from ignite.engine import Engine, Events

from thyroid_monai.mtl.distributed import average_buffers


def is_not_rank0() -> bool:
    """True in every process but the first of a process group: those write nothing.

    Checkpoints, reports and tracking records come from rank 0 only.
    """
    return dist.is_available() and dist.is_initialized() and dist.get_rank() > 0


class BufferAveraging:
    """Averages the network's buffers over the ranks at every epoch end (data-parallel runs).

    Under DDP the multitask step keeps BatchNorm running statistics local to each rank (see
    :func:`~thyroid_monai.mtl.distributed.average_buffers`); averaging them before validation and
    checkpointing makes every rank validate and hold the same model. Attach it before the
    validation and checkpoint handlers (``configs/multi_gpu_train.yaml`` puts it first). Outside
    a process group it does nothing.

    Args:
        network: The trained network (DDP-wrapped or not).
    """

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def attach(self, engine: Engine) -> None:
        """Registers the averaging at ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Averages the buffers over the ranks."""
        average_buffers(self.network)


__all__ = [
    "BufferAveraging",
    "is_not_rank0",
]
