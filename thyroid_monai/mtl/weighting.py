"""Loss-weighting baselines written in the project: uncertainty weighting and GradNorm.

Both own trainable parameters (:meth:`extra_parameters`): the bundle hands them to the optimiser
with the network's, so they are updated by the same optimiser step, all-reduced with the other
gradients under DDP, and checkpointed through :meth:`state_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from thyroid_monai.mtl.base import AggregateAt, Coefficients, GradientAggregator, ParameterSet
from thyroid_monai.mtl.gradients import Representation, plain_losses, timed_phase


def _task_names(
    tasks: Sequence[str] | None, task_weights: Mapping[str, float] | None
) -> tuple[str, ...]:
    names = tuple(tasks) if tasks is not None else tuple(task_weights or {})
    if not names:
        raise ValueError("name the tasks (tasks=[...] or task_weights={task: weight})")
    if len(set(names)) != len(names):
        raise ValueError(f"task names repeat: {names}")
    return names


def _check_tasks(expected: tuple[str, ...], losses: Mapping[str, torch.Tensor], owner: str) -> None:
    if tuple(losses) != expected:
        raise ValueError(f"{owner} was built for tasks {expected}, got losses {tuple(losses)}")


def _load_parameter(parameter: torch.nn.Parameter, value: Any, key: str) -> None:
    tensor = torch.as_tensor(value, dtype=parameter.dtype)
    if tensor.shape != parameter.shape:
        raise ValueError(
            f"{key} has shape {tuple(tensor.shape)}, expected {tuple(parameter.shape)}"
        )
    with torch.no_grad():
        parameter.copy_(tensor)  # in place: the optimiser holds this very parameter


class UncertaintyWeighting(GradientAggregator):
    """Homoscedastic-uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018).

    Minimises ``sum_t exp(-s_t) w_t L_t + s_t`` over the network and the log variances
    ``s_t = log sigma_t^2``. The paper's factor 1/2 on regression terms is dropped for every task
    (one form for mask, level and radiomics losses, as common implementations do); it only
    rescales ``s``.

    Args:
        tasks: Task names, in the order of the losses; defaults to the keys of ``task_weights``.
            The log variances must exist before the optimiser is built, hence the names.
        task_weights: Fixed weights ``w_t`` (1 when absent).
        initial_log_variance: Starting value of every ``s_t``.
        measure_conflict: Compute the per-task gradients (one backward pass per task) to report
            cosines and norms; the update is the same.
        parameters: Where conflict is measured (see :class:`GradientAggregator`).
        aggregate_at: Where conflict is measured (the update is the same either way).
    """

    name = "uncertainty"

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        task_weights: Mapping[str, float] | None = None,
        initial_log_variance: float = 0.0,
        measure_conflict: bool = False,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        self.tasks = _task_names(tasks, task_weights)
        self.initial_log_variance = float(initial_log_variance)
        self.measure_conflict = measure_conflict
        self.log_variance = torch.nn.Parameter(
            torch.full((len(self.tasks),), self.initial_log_variance)
        )

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """The log variances ``s_t``."""
        return [self.log_variance]

    def loss_weights(self) -> torch.Tensor:
        """``exp(-s_t) w_t``, the weight each task loss gets now (detached)."""
        fixed = torch.tensor([self.weight(task) for task in self.tasks])
        fixed = fixed.to(self.log_variance.device)
        return torch.exp(-self.log_variance.detach()) * fixed

    def head_weights(self, tasks: tuple[str, ...]) -> Mapping[str, float]:
        """Heads follow the uncertainty-weighted objective too."""
        return dict(zip(self.tasks, self.loss_weights().tolist(), strict=True))

    @property
    def needs_representation(self) -> bool:
        """Only when measuring conflict at the representation."""
        return self.measure_conflict and super().needs_representation

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """``exp(-s_t) w_t``: ``sum_t exp(-s_t) w_t g_t``."""
        return Coefficients(self.loss_weights().to(device=gram.device, dtype=gram.dtype))

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
        """One backward pass of the weighted objective, or per task when measuring conflict."""
        _check_tasks(self.tasks, losses, type(self).__name__)
        losses = plain_losses(losses)
        # The log variances live where they were made (CPU unless moved): the T loss values go
        # to them, differentiably, rather than the parameters to the network's device.
        stacked = torch.stack([losses[task] for task in self.tasks]).to(self.log_variance.device)
        fixed = torch.tensor(
            [self.weight(task) for task in self.tasks], dtype=stacked.dtype, device=stacked.device
        )
        if self.measure_conflict:
            diagnostics = super().backward(
                losses,
                shared_params=shared_params,
                task_params=task_params,
                epoch=epoch,
                representation=representation,
            )
            # The log variances see the losses as constants: their gradient needs no network pass.
            objective = (torch.exp(-self.log_variance) * fixed * stacked.detach()).sum()
        else:
            diagnostics = {
                f"weight_{task}": float(w)
                for task, w in zip(self.tasks, self.loss_weights(), strict=True)
            }
            objective = (torch.exp(-self.log_variance) * fixed * stacked).sum()
        with timed_phase(self.timer, "backward"):
            (objective + self.log_variance.sum()).backward()
        for task, s in zip(self.tasks, self.log_variance.detach().tolist(), strict=True):
            diagnostics[f"log_variance_{task}"] = float(s)
        return diagnostics

    def state_dict(self) -> dict[str, Any]:
        """The log variances."""
        return {"log_variance": self.log_variance.detach().clone()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores the log variances in place."""
        super().load_state_dict(state)
        _load_parameter(self.log_variance, state["log_variance"], "log_variance")

    def _describe(self) -> dict[str, Any]:
        described = {**super()._describe(), "tasks": list(self.tasks)}
        if self.initial_log_variance:
            described["initial_log_variance"] = self.initial_log_variance
        if self.measure_conflict:
            described["measure_conflict"] = True
        return described


class GradNorm(GradientAggregator):
    """GradNorm (Chen et al., ICML 2018): learns task weights that balance gradient norms.

    Each step, with ``n_t`` the norm of task ``t``'s gradient over the aggregated parameters,
    ``G_t = w_t n_t``, ``r_t`` the task's relative inverse training rate (``L_t / L_t(0)`` over its
    mean) and target ``mean(G) r_t^alpha`` held constant, the weights receive the gradient of
    ``sum_t |G_t - target_t|`` and the network the gradient of ``sum_t w_t L_t``. Choices:

    * weights are ``T softmax(logits)`` so they stay positive and sum to the number of tasks
      without a renormalisation step; the logits are an extra parameter stepped by the bundle's
      optimiser (as LibMTL does), so under DDP they stay equal on every rank;
    * norms are taken over the shared parameters (``parameters="shared"``), not the last shared
      layer only; ``"all"`` also counts the heads;
    * ``L_t(0)`` are the losses of the first step, kept in the checkpoint;
    * ``task_weights`` only define the joint objective reported as the loss.

    Args:
        tasks: Task names in loss order; defaults to the keys of ``task_weights``.
        task_weights: See :class:`GradientMethod`.
        alpha: Restoring-force strength (the paper's alpha; 1.5 as in LibMTL).
        parameters: Where the gradient norms are taken.
        aggregate_at: ``"parameters"``, or ``"representation"``: the norms are those of the
            gradients with respect to the encoder's output maps (as LibMTL with ``rep_grad``).
    """

    name = "gradnorm"

    def __init__(
        self,
        tasks: Sequence[str] | None = None,
        task_weights: Mapping[str, float] | None = None,
        alpha: float = 1.5,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        if alpha < 0:
            raise ValueError(f"alpha must be non-negative, got {alpha}")
        self.tasks = _task_names(tasks, task_weights)
        self.alpha = float(alpha)
        self.logits = torch.nn.Parameter(torch.zeros(len(self.tasks)))
        self.initial_losses: torch.Tensor | None = None
        self._losses: torch.Tensor | None = None

    def extra_parameters(self) -> list[torch.nn.Parameter]:
        """The weight logits."""
        return [self.logits]

    def loss_weights(self) -> torch.Tensor:
        """The current weights ``T softmax(logits)`` (detached)."""
        return len(self.tasks) * torch.softmax(self.logits.detach(), dim=0)

    def head_weights(self, tasks: tuple[str, ...]) -> Mapping[str, float]:
        """Heads follow the GradNorm-weighted objective."""
        return dict(zip(self.tasks, self.loss_weights().tolist(), strict=True))

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
        """Records the loss values for :meth:`coefficients`, then aggregates."""
        _check_tasks(self.tasks, losses, type(self).__name__)
        values = torch.stack([losses[task].detach() for task in self.tasks]).float()
        self._losses = values.to(self.logits.device)
        if self.initial_losses is None:
            self.initial_losses = self._losses.clone()
        return super().backward(
            losses,
            shared_params=shared_params,
            task_params=task_params,
            epoch=epoch,
            representation=representation,
        )

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """The current weights (``sum_t w_t g_t``); writes the logits' GradNorm gradient.

        The gradient norms are the square roots of the Gram matrix's diagonal.
        """
        if self._losses is None or self.initial_losses is None:
            raise RuntimeError("GradNorm needs the losses: call backward")
        norms = gram.detach().diagonal().clamp_min(0).sqrt().to(self.logits.device).float()
        ratios = self._losses / self.initial_losses.clamp_min(torch.finfo(torch.float32).tiny)
        inverse_rate = ratios / ratios.mean().clamp_min(torch.finfo(torch.float32).tiny)
        balanced = len(self.tasks) * torch.softmax(self.logits, dim=0)
        weighted_norms = balanced * norms
        target = (weighted_norms.mean() * inverse_rate**self.alpha).detach()
        gradnorm_loss = (weighted_norms - target).abs().sum()
        (logits_grad,) = torch.autograd.grad(gradnorm_loss, [self.logits])
        self.logits.grad = (
            logits_grad if self.logits.grad is None else self.logits.grad + logits_grad
        )
        return Coefficients(
            balanced.detach().to(device=gram.device, dtype=gram.dtype),
            {"gradnorm_loss": float(gradnorm_loss.detach())},
        )

    def state_dict(self) -> dict[str, Any]:
        """Weight logits and the reference losses ``L_t(0)`` (None before the first step)."""
        initial = None if self.initial_losses is None else self.initial_losses.clone()
        return {"logits": self.logits.detach().clone(), "initial_losses": initial}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores logits (in place) and reference losses."""
        super().load_state_dict(state)
        _load_parameter(self.logits, state["logits"], "logits")
        initial = state["initial_losses"]
        if initial is not None:
            initial = torch.as_tensor(initial).float().to(self.logits.device)
        self.initial_losses = initial

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "tasks": list(self.tasks), "alpha": self.alpha}
