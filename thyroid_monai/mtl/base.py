"""The interface every multitask gradient method implements.

The trainer computes per-task losses and hands them to ``method.backward``; the method writes the
parameter gradients (``.grad``) and returns diagnostics (floats) that end up in
``engine.state.output`` and in MLflow. Nothing else in the code base calls ``.backward()`` on a
training loss.

Two kinds of method share the interface:

* loss weighting (:class:`WeightedSum`, uncertainty weighting): one backward pass of a weighted
  sum of the losses;
* gradient aggregation (:class:`GradientAggregator`: CAME-Grad, GradNorm, the torchjd methods):
  the per-task gradients are computed first, by the one engine every method uses
  (:func:`~thyroid_monai.mtl.gradients.task_gradients`), then combined into one direction by a
  function of the ``[tasks, params]`` matrix alone (:meth:`GradientAggregator.combine`), which is
  why every aggregator can be tested without a network. Every method here is a combination
  ``c @ G`` whose coefficients depend on the matrix through its Gram matrix ``G G^T`` only
  (:meth:`GradientAggregator.coefficients`): the training step computes the Gram matrix from the
  per-task gradients as autograd returns them and never builds the matrix itself.

Where the gradients are aggregated (``aggregate_at``, every aggregator): ``"parameters"`` (the
shared parameters, the methods as published) or ``"representation"`` (the shared encoder's
output maps, as LibMTL's ``rep_grad`` and MGDA-UB). At the representation the task gradients are
``dL_t/dz`` for the encoder maps ``z``; the aggregated ``d = sum_t c_t dL_t/dz`` (or the
aggregator's direction) goes through the encoder in one backward pass, so the encoder receives
``J^T d`` with ``J = dz/dtheta``. The approximation: the coefficients ``c`` are computed from the
Gram matrix of the map gradients instead of that of the parameter gradients ``J^T dL_t/dz``
(they agree when ``J^T J`` is a multiple of the identity on the span of the map gradients), and
the diagnostics (cosines, norms) describe the map gradients. The cost is one backward through
the heads per task and one through the encoder, about the plain step's.
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
from thyroid_monai.mtl.gradients import (
    PhaseTimer,
    Representation,
    TaskGradients,
    task_gradients,
    timed_phase,
)

ParameterSet = Literal["shared", "all"]
PARAMETER_SETS: tuple[str, ...] = ("shared", "all")
AggregateAt = Literal["parameters", "representation"]
AGGREGATE_AT: tuple[str, ...] = ("parameters", "representation")


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
        # Set by benchmarks/step_cost.py to time the phases of backward; None in training.
        self.timer: PhaseTimer | None = None

    @property
    def needs_representation(self) -> bool:
        """Whether the trainer must cut the graph at the shared encoder for this method."""
        return False

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
        representation: Representation | None = None,
    ) -> dict[str, float]:
        """Writes ``.grad`` of the parameters from the task losses.

        Args:
            losses: Scalar loss per task, still attached to the graph. Any number of tasks; a
                regulariser (RLAR) may already be added to them.
            shared_params: Parameters shared by every task (the encoder).
            task_params: Parameters specific to each task (heads, decoder), when known.
            latent: The shared latent tensor, for methods that work on representations.
            epoch: Current epoch (1-based), for methods with schedules.
            representation: The graph cut at the shared encoder, when
                :attr:`needs_representation` (see :func:`~thyroid_monai.mtl.representation_cut`).

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


def _unique(params: Sequence[torch.Tensor], exclude: set[int] | None = None) -> list[torch.Tensor]:
    seen = set(exclude or ())
    unique = []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            unique.append(p)
    return unique


def _accumulates(p: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether a gradient of ``dtype`` can be added to ``p.grad`` in place."""
    return p.grad is not None and p.grad.dtype == dtype and p.grad.shape == p.shape


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


@dataclass(frozen=True)
class Coefficients:
    """An aggregator's direction as a combination ``values @ G`` of the task gradients.

    Attributes:
        values: One coefficient per task (the effective task weights).
        diagnostics: Further method-specific floats.
    """

    values: torch.Tensor
    diagnostics: Mapping[str, float] | None = None


class GradientAggregator(GradientMethod):
    """Computes the per-task gradients, then combines them into one update direction.

    Subclasses implement :meth:`coefficients`, a function of the Gram matrix ``G G^T`` and the
    task weights, or (for a direction that is not such a combination) :meth:`combine`, a function
    of the ``[tasks, params]`` matrix. Diagnostics (gradient norms, pairwise cosines, conflict
    indicator, effective weights) come from the Gram matrix at no extra backward pass.

    Args:
        task_weights: See :class:`GradientMethod`.
        parameters: ``"shared"`` aggregates over the shared parameters only (the task-specific
            parameters get the gradient of the joint objective, as in CAGrad and torchjd's
            ``mtl_backward``); ``"all"`` aggregates over shared and task-specific parameters
            flattened together (a task's gradient is zero on another task's head).
        aggregate_at: ``"parameters"`` or ``"representation"`` (the shared encoder's output maps
            replace the encoder's parameters among the aggregated tensors; see the module
            docstring for the approximation).
    """

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights)
        if parameters not in PARAMETER_SETS:
            raise ValueError(f"parameters must be one of {PARAMETER_SETS}, got {parameters!r}")
        if aggregate_at not in AGGREGATE_AT:
            raise ValueError(f"aggregate_at must be one of {AGGREGATE_AT}, got {aggregate_at!r}")
        self.parameters: ParameterSet = parameters
        self.aggregate_at: AggregateAt = aggregate_at

    @property
    def needs_representation(self) -> bool:
        """True when aggregating at the representation."""
        return self.aggregate_at == "representation"

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """The direction's coefficients from the Gram matrix of the task gradients.

        Args:
            gram: ``[tasks, tasks]`` Gram matrix of the unweighted task gradients.
            weights: Task weights of the joint objective, one per row.
            epoch: Current epoch (1-based).

        Raises:
            NotImplementedError: For a method whose direction is not such a combination (it
                implements :meth:`combine` instead).
        """
        raise NotImplementedError(f"{type(self).__name__} combines the gradient matrix itself")

    def combine(self, grads: torch.Tensor, weights: torch.Tensor, epoch: int) -> Combination:
        """Combines the per-task gradients (``coefficients @ grads`` unless overridden).

        Args:
            grads: ``[tasks, params]`` gradients of the unweighted task losses.
            weights: Task weights of the joint objective, one per row.
            epoch: Current epoch (1-based).
        """
        gram = grads @ grads.T
        found = self.coefficients(gram, weights, epoch)
        values = found.values.to(device=grads.device, dtype=grads.dtype)
        return Combination(values @ grads, values, found.diagnostics, gram)

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
        representation: Representation | None = None,
    ) -> dict[str, float]:
        """Task gradients from the engine, the combination, then ``.grad`` and diagnostics.

        Without ``task_params`` the heads are unknown: the joint objective is back-propagated once
        more for them and the aggregated gradient then replaces that of the shared parameters.
        """
        aggregated, others = self._columns(shared_params, task_params, representation)
        if task_params is None:
            self.joint_loss(losses).backward(retain_graph=True)
            for p in aggregated:
                p.grad = None
        with timed_phase(self.timer, "task_gradients"):
            gradients = task_gradients(
                losses, aggregated, other_params=others, weights=self.head_weights(tuple(losses))
            )
        if self.timer is not None:
            self.timer.task_gradient_bytes.append(gradients.nbytes())
        weights = torch.tensor(
            [self.weight(task) for task in gradients.tasks],
            dtype=gradients.dtype,
            device=gradients.params[0].device,
        )
        with timed_phase(self.timer, "aggregation"):
            gram = gradients.gram()
            _check_finite(gram, gradients.tasks, losses)
            combination = self._combination(gradients, gram, weights, epoch)
        with timed_phase(self.timer, "write"):
            leaf_grads = self._write(gradients, combination, representation)
        if representation is not None and leaf_grads:
            with timed_phase(self.timer, "representation_backward"):
                representation.backward(leaf_grads)
        with timed_phase(self.timer, "diagnostics"):
            return self._diagnostics(gradients.tasks, gram, weights, combination)

    def _columns(
        self,
        shared_params: Sequence[torch.Tensor],
        task_params: Mapping[str, Sequence[torch.Tensor]] | None,
        representation: Representation | None,
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """The aggregated tensors and the parameters that get the joint objective's gradient."""
        shared = _unique(shared_params)
        heads = _unique(
            [p for ps in (task_params or {}).values() for p in ps], exclude={id(p) for p in shared}
        )
        if self.aggregate_at == "representation":
            if representation is None:
                raise ValueError(
                    f"{type(self).__name__} aggregate_at='representation' needs the graph cut at "
                    "the shared encoder: train with MultitaskTrainer on a network that has "
                    "representation_module()"
                )
            below = {id(p) for p in representation.params}
            shared = [
                *representation.leaves,
                *(p for p in shared if id(p) not in below),
            ]
            heads = [p for p in heads if id(p) not in below]
        return (shared + heads, []) if self.parameters == "all" else (shared, heads)

    def _combination(
        self, gradients: TaskGradients, gram: torch.Tensor, weights: torch.Tensor, epoch: int
    ) -> Combination:
        """The coefficients from the Gram matrix; the matrix's combination only if needed.

        With coefficients, ``vector`` is left empty: :meth:`_write` adds ``c @ G`` to ``.grad``
        directly from the per-task gradients.
        """
        try:
            found = self.coefficients(gram, weights, epoch)
        except NotImplementedError:
            return self.combine(gradients.matrix, weights, epoch)
        values = found.values.to(device=gram.device, dtype=gram.dtype)
        return Combination(gram.new_empty(0), values, found.diagnostics, gram)

    def _write(
        self,
        gradients: TaskGradients,
        combination: Combination,
        representation: Representation | None,
    ) -> dict[torch.Tensor, torch.Tensor]:
        """Adds the combination and the heads' gradients to ``.grad``; returns the leaves' part."""
        leaves = set() if representation is None else {id(t) for t in representation.leaves}
        if combination.vector.numel() == 0 and combination.coefficients is not None:
            # c @ G added to the existing .grad in place: no vector, no temporary per column
            into = [
                p.grad if id(p) not in leaves and _accumulates(p, gradients.dtype) else None
                for p in gradients.params
            ]
            pieces = gradients.combine(combination.coefficients, into=into)
        else:
            into = [None] * len(gradients.params)
            pieces = gradients.split(combination.vector)
        leaf_grads: dict[torch.Tensor, torch.Tensor] = {}
        for p, g, target in zip(gradients.params, pieces, into, strict=True):
            if id(p) in leaves:
                leaf_grads[p] = g.to(p.dtype)
            elif target is None:
                grad = g.view_as(p).to(p.dtype)
                p.grad = grad if p.grad is None else p.grad + grad
        for p, g in gradients.rest.items():
            if _accumulates(p, g.dtype):
                assert p.grad is not None
                p.grad.add_(g)
            else:
                p.grad = g if p.grad is None else p.grad + g
        return leaf_grads

    def _diagnostics(
        self,
        tasks: tuple[str, ...],
        gram: torch.Tensor,
        weights: torch.Tensor,
        combination: Combination,
    ) -> dict[str, float]:
        diagnostics = gradient_diagnostics(gram, tasks)
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
            for task, value in zip(tasks, combination.coefficients.tolist(), strict=True):
                diagnostics[f"weight_{task}"] = float(value)
        diagnostics.update(combination.diagnostics or {})
        return diagnostics

    def _describe(self) -> dict[str, Any]:
        described: dict[str, Any] = {**super()._describe(), "parameters": self.parameters}
        if self.aggregate_at != "parameters":
            described["aggregate_at"] = self.aggregate_at
        return described


class WeightedSum(GradientAggregator):
    """Plain multitask learning: the weighted sum of the task losses (equal weights by default).

    Args:
        task_weights: See :class:`GradientMethod`.
        measure_conflict: Compute the per-task gradients to report their cosines and norms (one
            backward pass per task instead of one in all; the update is the same).
        parameters: Where conflict is measured, see :class:`GradientAggregator`.
        aggregate_at: Where conflict is measured (the update is the same either way).
    """

    name = "sum"

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        measure_conflict: bool = False,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        self.measure_conflict = measure_conflict

    @property
    def needs_representation(self) -> bool:
        """Only when measuring conflict at the representation."""
        return self.measure_conflict and super().needs_representation

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """The task weights: ``sum_t w_t g_t``."""
        return Coefficients(weights)

    def backward(
        self,
        losses: Mapping[str, torch.Tensor],
        *,
        shared_params: Sequence[torch.Tensor],
        task_params: Mapping[str, Sequence[torch.Tensor]] | None = None,
        latent: torch.Tensor | None = None,
        epoch: int = 0,
        representation: Representation | None = None,
    ) -> dict[str, float]:
        """Back-propagates ``sum_t w_t L_t`` once, or per task when measuring conflict."""
        if self.measure_conflict:
            return super().backward(
                losses,
                shared_params=shared_params,
                task_params=task_params,
                epoch=epoch,
                representation=representation,
            )
        with timed_phase(self.timer, "backward"):
            self.joint_loss(losses).backward()
        return {f"weight_{task}": self.weight(task) for task in losses}

    def _describe(self) -> dict[str, Any]:
        if not self.measure_conflict:
            return GradientMethod._describe(self)
        return {**super()._describe(), "measure_conflict": True}
