"""The interface every multitask gradient method implements, and the registry of methods.

The trainer computes per-task losses and hands them to ``method.backward``; the method writes the
parameter gradients (``.grad``) and returns diagnostics (floats) that end up in
``engine.state.output`` and in MLflow. Nothing else in the code base calls ``.backward()`` on a
training loss.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch


class GradientMethod(ABC):
    """Turns per-task losses into parameter gradients.

    Args:
        task_weights: Weight of each task in the joint objective ``sum_t w_t L_t``; tasks not
            named get weight 1. Methods that re-weight or re-direct gradients still report this
            joint objective as the training loss, so runs stay comparable.
    """

    name: ClassVar[str]

    def __init__(self, task_weights: Mapping[str, float] | None = None):
        weights = dict(task_weights or {})
        negative = {task: w for task, w in weights.items() if w < 0}
        if negative:
            raise ValueError(f"task weights must be non-negative, got {negative}")
        self.task_weights = weights

    def weight(self, task: str) -> float:
        """Weight of ``task`` in the joint objective."""
        return float(self.task_weights.get(task, 1.0))

    def joint_loss(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The joint objective ``sum_t w_t L_t``."""
        return torch.stack([self.weight(task) * loss for task, loss in losses.items()]).sum()

    @abstractmethod
    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        *,
        shared_params: Sequence[torch.Tensor],
        task_params: Mapping[str, Sequence[torch.Tensor]] | None = None,
        latent: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, float]:
        """Writes ``.grad`` of the parameters from the task losses.

        Args:
            losses: Scalar loss per task, still attached to the graph.
            shared_params: Parameters shared by every task (the encoder).
            task_params: Parameters specific to each task (heads, decoder), when known.
            latent: The shared latent tensor, for methods that work on representations.
            epoch: Current epoch (1-based), for methods with schedules.

        Returns:
            Diagnostics as plain floats (task weights, cosines, norms...).
        """

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the method owns (for example learned loss weights)."""
        return []

    def _describe(self) -> dict[str, Any]:
        return {"task_weights": self.task_weights} if self.task_weights else {}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._describe().items())
        return f"{type(self).__name__}({arguments})"


class WeightedSum(GradientMethod):
    """Plain multitask learning: back-propagate the weighted sum of the task losses."""

    name = "sum"

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        *,
        shared_params: Sequence[torch.Tensor],
        task_params: Mapping[str, Sequence[torch.Tensor]] | None = None,
        latent: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, float]:
        """Back-propagates ``sum_t w_t L_t`` once."""
        self.joint_loss(losses).backward()
        return {f"weight_{task}": self.weight(task) for task in losses}


GRADIENT_METHODS: dict[str, type[GradientMethod]] = {WeightedSum.name: WeightedSum}


def build_gradient_method(name: str, **kwargs: Any) -> GradientMethod:
    """Instantiates a registered method by name.

    Raises:
        KeyError: For an unknown name (the message lists the registered ones).
    """
    try:
        method = GRADIENT_METHODS[name]
    except KeyError:
        valid = ", ".join(sorted(GRADIENT_METHODS))
        raise KeyError(f"unknown gradient method {name!r}; registered: {valid}") from None
    return method(**kwargs)
