"""The optimiser and learning-rate schedule of a training run, built from the run's objects."""

from __future__ import annotations

from collections.abc import Sized

import torch
from monai.optimizers import WarmupCosineSchedule

from thyroid_monai.mtl.base import GradientMethod


def adamw(
    network: torch.nn.Module,
    gradient_method: GradientMethod,
    lr: float,
    weight_decay: float = 1e-4,
) -> torch.optim.AdamW:
    """AdamW over the network's parameters and those the gradient method learns (task weights).

    Fused (one kernel for all parameters) where torch fuses AdamW, on CPU and CUDA: on a CPU
    it is four times faster than the per-tensor loop, about a sixth of a small model's step.

    Args:
        network: The model (already on its device).
        gradient_method: Methods with learned weights (uncertainty, GradNorm) own parameters the
            optimiser must step.
        lr: Learning rate.
        weight_decay: Decoupled weight decay.
    """
    params = [*network.parameters(), *gradient_method.extra_parameters()]
    device = params[0].device.type if params else "cpu"
    fused = True if device in ("cpu", "cuda") else None
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=fused)


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    data_loader: Sized,
    warmup_epochs: float,
    max_epochs: int,
    warmup_multiplier: float = 0.1,
) -> WarmupCosineSchedule:
    """Linear warm-up from ``warmup_multiplier`` of the rate, then a cosine decay to 0.

    Stepped every iteration (``LrScheduleHandler(epoch_level=False)``): short CPU schedules need
    both the warm-up and the decay.

    Args:
        optimizer: The optimiser.
        data_loader: The training loader; its length is the iterations per epoch.
        warmup_epochs: Epochs of warm-up.
        max_epochs: Epochs of the whole run.
        warmup_multiplier: Share of the learning rate the warm-up starts from.
    """
    iterations = len(data_loader)
    return WarmupCosineSchedule(
        optimizer,
        warmup_steps=int(warmup_epochs * iterations),
        t_total=max_epochs * iterations,
        warmup_multiplier=warmup_multiplier,
    )
