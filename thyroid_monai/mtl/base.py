"""The interface every multitask gradient method implements.

The trainer computes per-task losses and hands them to ``method.backward``; the method writes the
parameter gradients (``.grad``) and returns diagnostics (floats) that end up in
``engine.state.output`` and in MLflow. Nothing else in the code base calls ``.backward()`` on a
training loss.

Two kinds of method share the interface:

* loss weighting (:class:`WeightedSum`, uncertainty weighting): one backward pass of a weighted
  sum of the losses;
* gradient aggregation (:class:`GradientAggregator`: CAME-Grad, GradNorm, the torchjd methods):
  the per-task gradients are computed first (:func:`task_gradients`, a ``[tasks, params]``
  matrix), then combined into one vector by a function of that matrix alone (:meth:`combine`),
  which is why every aggregator can be tested without a network.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch

from thyroid_monai.mtl.diagnostics import gradient_diagnostics

ParameterSet = Literal["shared", "all"]
PARAMETER_SETS: tuple[str, ...] = ("shared", "all")


def option_names(method: type) -> list[str]:
    """The named constructor arguments of a gradient method, task names and weights aside."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return [
        option
        for option, parameter in inspect.signature(method).parameters.items()
        if option not in ("tasks", "task_weights") and parameter.kind in named
    ]


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
            losses: Scalar loss per task, still attached to the graph. Any number of tasks; a
                regulariser (RLAR) may already be added to them.
            shared_params: Parameters shared by every task (the encoder).
            task_params: Parameters specific to each task (heads, decoder), when known.
            latent: The shared latent tensor, for methods that work on representations.
            epoch: Current epoch (1-based), for methods with schedules.

        Returns:
            Diagnostics as plain floats (task weights, cosines, norms...).
        """

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """Trainable parameters the method owns (learned loss weights); the optimiser needs them."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """State that a checkpoint must keep (learned weights, reference losses...)."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned.

        Raises:
            KeyError: If ``state`` misses an entry this method keeps.
        """
        missing = set(self.state_dict()) - set(state)
        if missing:
            raise KeyError(f"{type(self).__name__} state misses {sorted(missing)}")

    def options(self) -> dict[str, Any]:
        """The method's constructor options and the values it runs with (tracking params).

        The task names and weights are not options: they come from the task set.
        """
        return {option: getattr(self, option) for option in option_names(type(self))}

    def tracking_params(self) -> dict[str, Any]:
        """What a tracked run records: the registry name and the options."""
        return {"name": self.name, **self.options()}

    def _describe(self) -> dict[str, Any]:
        return {"task_weights": self.task_weights} if self.task_weights else {}

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={value!r}" for key, value in self._describe().items())
        return f"{type(self).__name__}({arguments})"


@dataclass(frozen=True)
class TaskGradients:
    """Per-task gradients of one step.

    Attributes:
        tasks: Task names, in the row order of ``matrix``.
        matrix: ``[tasks, params]`` gradients of the unweighted task losses over the aggregated
            parameters, flattened in float32 (or wider, if the parameters are).
        params: The aggregated parameters, in the column order of ``matrix``.
        rest: Gradient of the joint objective for every other parameter the tasks reach.
    """

    tasks: tuple[str, ...]
    matrix: torch.Tensor
    params: tuple[torch.Tensor, ...]
    rest: dict[torch.Tensor, torch.Tensor]


def plain_losses(losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The losses as plain tensors, still in the graph.

    Losses computed from MONAI ``MetaTensor`` batches are MetaTensors, and so would be their
    gradients, whose batch metadata breaks flattening and slicing.
    """
    return {task: loss.as_subclass(torch.Tensor) for task, loss in losses.items()}


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the parameters' own type when it is wider: half-precision sums lose conflicts."""
    return torch.promote_types(dtype, torch.float32)


def task_gradients(
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    other_params: Sequence[torch.Tensor] = (),
    weights: Mapping[str, float] | None = None,
) -> TaskGradients:
    """Computes each task's gradient, one backward pass per task, without writing ``.grad``.

    Args:
        losses: Scalar loss per task (attached to one graph).
        params: Parameters whose per-task gradients form the matrix.
        other_params: Further parameters (task heads): they receive the gradient of the joint
            objective ``sum_t w_t L_t``, accumulated from the same backward passes.
        weights: Task weights of the joint objective (1 when absent).

    Returns:
        The gradient matrix; a parameter a task does not reach contributes zeros.

    Raises:
        ValueError: Without losses or parameters, or for a loss that is not a finite scalar.
    """
    if not losses:
        raise ValueError("no task losses to differentiate")
    if not params:
        raise ValueError("no parameters to differentiate the task losses by")
    for task, loss in losses.items():
        if loss.dim() != 0:
            raise ValueError(
                f"loss of task {task!r} must be a scalar, got shape {tuple(loss.shape)}"
            )
    losses = plain_losses(losses)
    tasks = tuple(losses)
    inputs = [*params, *other_params]
    sizes = [p.numel() for p in params]
    # Filled row by row in place: one copy of each gradient, no concatenation or stacking.
    matrix = torch.empty(
        len(tasks), sum(sizes), dtype=accumulation_dtype(params[0].dtype), device=params[0].device
    )
    rest: dict[torch.Tensor, torch.Tensor] = {}
    for index, task in enumerate(tasks):
        grads = torch.autograd.grad(
            losses[task], inputs, retain_graph=index < len(tasks) - 1, allow_unused=True
        )
        for piece, g in zip(matrix[index].split(sizes), grads[: len(params)], strict=True):
            if g is None:
                piece.zero_()
            else:
                piece.copy_(g.reshape(-1))
        weight = 1.0 if weights is None else float(weights.get(task, 1.0))
        for p, g in zip(other_params, grads[len(params) :], strict=True):
            if g is not None:
                rest[p] = weight * g if p not in rest else rest[p] + weight * g
    return TaskGradients(tasks, matrix, tuple(params), rest)


def write_gradient(params: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Adds a flat gradient vector to the ``.grad`` of ``params`` (in their order and dtype)."""
    total = sum(p.numel() for p in params)
    if total != vector.numel():
        raise ValueError(f"gradient vector has {vector.numel()} entries, parameters {total}")
    # The pieces are views of ``vector``, which nothing else holds: no copy is needed.
    for p, piece in zip(params, vector.split([p.numel() for p in params]), strict=True):
        grad = piece.view_as(p).to(p.dtype)
        p.grad = grad if p.grad is None else p.grad + grad


def _unique(params: Sequence[torch.Tensor], exclude: set[int] | None = None) -> list[torch.Tensor]:
    seen = set(exclude or ())
    unique = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def _check_finite(
    gram: torch.Tensor, tasks: Sequence[str], losses: Mapping[str, torch.Tensor]
) -> None:
    """Refuses to write a step from non-finite gradients, naming the tasks that produced them."""
    if bool(torch.isfinite(gram).all()):
        return
    norms2 = gram.diagonal().tolist()
    bad = [task for task, norm2 in zip(tasks, norms2, strict=True) if not math.isfinite(norm2)]
    values = {task: float(losses[task].detach()) for task in bad or tasks}
    raise FloatingPointError(
        f"non-finite gradient of task(s) {bad or list(tasks)}; losses {values}"
    )


@dataclass(frozen=True)
class Combination:
    """What an aggregator makes of the gradient matrix.

    Attributes:
        vector: The combined gradient over the aggregated parameters.
        coefficients: ``c`` with ``vector = c @ matrix`` when the method is such a combination (the
            effective task weights, logged as ``weight_<task>``); None otherwise.
        diagnostics: Further method-specific floats.
        gram: The Gram matrix ``G G^T``, if the method computed it (saves computing it again).
    """

    vector: torch.Tensor
    coefficients: torch.Tensor | None = None
    diagnostics: Mapping[str, float] | None = None
    gram: torch.Tensor | None = None


class GradientAggregator(GradientMethod):
    """Computes the per-task gradients, then combines them into one update direction.

    Subclasses implement :meth:`combine`, a function of the ``[tasks, params]`` matrix and the
    task weights. Diagnostics (gradient norms, pairwise cosines, conflict indicator, effective
    weights) come from the same matrix at no extra backward pass.

    Args:
        task_weights: See :class:`GradientMethod`.
        parameters: ``"shared"`` aggregates over the shared parameters only (the task-specific
            parameters get the gradient of the joint objective, as in CAGrad and torchjd's
            ``mtl_backward``); ``"all"`` aggregates over shared and task-specific parameters
            flattened together (a task's gradient is zero on another task's head).
    """

    def __init__(
        self, task_weights: Mapping[str, float] | None = None, parameters: ParameterSet = "shared"
    ):
        super().__init__(task_weights)
        if parameters not in PARAMETER_SETS:
            raise ValueError(f"parameters must be one of {PARAMETER_SETS}, got {parameters!r}")
        self.parameters: ParameterSet = parameters

    @abstractmethod
    def combine(self, grads: torch.Tensor, weights: torch.Tensor, epoch: int) -> Combination:
        """Combines the per-task gradients.

        Args:
            grads: ``[tasks, params]`` gradients of the unweighted task losses.
            weights: Task weights of the joint objective, one per row.
            epoch: Current epoch (1-based).
        """

    def head_weights(self, tasks: tuple[str, ...]) -> Mapping[str, float]:
        """Task weights of the gradient the non-aggregated parameters get: the joint objective's."""
        return {task: self.weight(task) for task in tasks}

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        *,
        shared_params: Sequence[torch.Tensor],
        task_params: Mapping[str, Sequence[torch.Tensor]] | None = None,
        latent: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, float]:
        """Per-task backward passes, :meth:`combine`, then ``.grad`` and diagnostics.

        Without ``task_params`` the heads are unknown: the joint objective is back-propagated once
        more for them and the aggregated gradient then replaces that of the shared parameters.
        """
        shared = _unique(shared_params)
        heads = _unique(
            [p for ps in (task_params or {}).values() for p in ps], exclude={id(p) for p in shared}
        )
        aggregated, others = (shared + heads, []) if self.parameters == "all" else (shared, heads)
        if task_params is None:
            self.joint_loss(losses).backward(retain_graph=True)
            for p in shared:
                p.grad = None
        gradients = task_gradients(
            losses, aggregated, other_params=others, weights=self.head_weights(tuple(losses))
        )
        weights = torch.tensor(
            [self.weight(task) for task in gradients.tasks],
            dtype=gradients.matrix.dtype,
            device=gradients.matrix.device,
        )
        combination = self.combine(gradients.matrix, weights, epoch)
        matrix = gradients.matrix
        gram = matrix @ matrix.T if combination.gram is None else combination.gram
        _check_finite(gram, gradients.tasks, losses)
        write_gradient(aggregated, combination.vector)
        for p, g in gradients.rest.items():
            p.grad = g if p.grad is None else p.grad + g
        return self._diagnostics(gradients, gram, weights, combination)

    def _diagnostics(
        self,
        gradients: TaskGradients,
        gram: torch.Tensor,
        weights: torch.Tensor,
        combination: Combination,
    ) -> dict[str, float]:
        diagnostics = gradient_diagnostics(gram, gradients.tasks)
        # Norms of combinations of the rows follow from the Gram matrix: no pass over the params.
        gram64 = gram.detach().to(torch.float64)
        w = weights.to(torch.float64)
        joint_norm = float(torch.sqrt((w @ gram64 @ w).clamp_min(0)))
        if combination.coefficients is None:
            combined_norm = float(torch.linalg.vector_norm(combination.vector))
        else:
            c = combination.coefficients.to(torch.float64)
            combined_norm = float(torch.sqrt((c @ gram64 @ c).clamp_min(0)))
        diagnostics["grad_norm_combined"] = combined_norm
        diagnostics["combined_to_joint_norm"] = (
            combined_norm / joint_norm if joint_norm > 0 else 0.0
        )
        if combination.coefficients is not None:
            for task, value in zip(gradients.tasks, combination.coefficients.tolist(), strict=True):
                diagnostics[f"weight_{task}"] = float(value)
        diagnostics.update(combination.diagnostics or {})
        return diagnostics

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "parameters": self.parameters}


class WeightedSum(GradientAggregator):
    """Plain multitask learning: the weighted sum of the task losses (equal weights by default).

    Args:
        task_weights: See :class:`GradientMethod`.
        measure_conflict: Compute the per-task gradients to report their cosines and norms (one
            backward pass per task instead of one in all; the update is the same).
        parameters: Where conflict is measured, see :class:`GradientAggregator`.
    """

    name = "sum"

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        measure_conflict: bool = False,
        parameters: ParameterSet = "shared",
    ):
        super().__init__(task_weights, parameters)
        self.measure_conflict = measure_conflict

    def combine(self, grads: torch.Tensor, weights: torch.Tensor, epoch: int) -> Combination:
        """``sum_t w_t g_t``."""
        return Combination(weights @ grads, coefficients=weights)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        *,
        shared_params: Sequence[torch.Tensor],
        task_params: Mapping[str, Sequence[torch.Tensor]] | None = None,
        latent: torch.Tensor | None = None,
        epoch: int = 0,
    ) -> dict[str, float]:
        """Back-propagates ``sum_t w_t L_t`` once, or per task when measuring conflict."""
        if self.measure_conflict:
            return super().backward(
                losses, shared_params=shared_params, task_params=task_params, epoch=epoch
            )
        self.joint_loss(losses).backward()
        return {f"weight_{task}": self.weight(task) for task in losses}

    def _describe(self) -> dict[str, Any]:
        if not self.measure_conflict:
            return GradientMethod._describe(self)
        return {**super()._describe(), "measure_conflict": True}
