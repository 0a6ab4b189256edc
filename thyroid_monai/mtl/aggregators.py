"""The standard conflict-aware aggregators, through the ``torchjd`` library.

Each class builds one torchjd aggregator and applies its weighting to the Gram matrix of the task
gradients that :class:`~thyroid_monai.mtl.base.GradientAggregator` computed; nothing of the
aggregation itself is written here, with one exception: Nash-MTL solves its bargaining equation
with its own exact Newton solver by default (:func:`nash_bargaining_weights`; torchjd's sequence
of convex problems stays as ``solver: ccp``), because torchjd's does not converge on the small
gradients of the representation and took up to 11% of a step there. Every aggregator used here
is a torchjd ``WeightedAggregator`` (the direction is ``weights @ matrix``): the Gramian-weighted
ones read ``G G^T`` by definition, and Nash-MTL's weighting reads the matrix only through
``G G^T`` and ``||weights @ G||`` (torchjd 0.18), so it is handed a ``[tasks, tasks]`` factor
``F`` with ``F F^T = G G^T``: no step builds the ``[tasks, params]`` matrix. The task weights
scale each task's gradient row before aggregation (they weight the losses). torchjd and its
solvers (cvxpy, clarabel, ecos, qpsolvers, quadprog) come with the ``mtl`` extra:
``pip install 'thyroid-monai[mtl]'``.
"""

from __future__ import annotations

import importlib.util
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch

from thyroid_monai.mtl.base import (
    AggregateAt,
    Coefficients,
    Combination,
    GradientAggregator,
    ParameterSet,
)

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator

EXTRA = "mtl"


def require_modules(owner: str, modules: Sequence[str], extra: str = EXTRA) -> None:
    """Raises a clear error when optional modules are missing.

    Raises:
        ImportError: Naming the missing modules and the extra that installs them.
    """
    missing = [module for module in modules if importlib.util.find_spec(module) is None]
    if missing:
        raise ImportError(
            f"{owner} needs {', '.join(missing)}, which is not installed: install the "
            f"'{extra}' extra (pip install 'thyroid-monai[{extra}]')"
        )


class TorchJDMethod(GradientAggregator):
    """A torchjd aggregator as a gradient method.

    Subclasses name the modules they need (``requires``) and build the aggregator for a number
    of tasks. The aggregator is built at the first step, when the number of tasks is known, and
    rebuilt if it changes. For weighted aggregators the torchjd weights are logged as the
    effective task weights.

    Args:
        task_weights: Scale each task's gradient before aggregation (1 when absent).
        parameters: ``"shared"`` (default) or ``"all"``, see :class:`GradientAggregator`.
        aggregate_at: ``"parameters"`` (default) or ``"representation"``, see
            :class:`GradientAggregator`.
    """

    requires: ClassVar[tuple[str, ...]] = ("torchjd",)

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        require_modules(type(self).__name__, self.required_modules())
        self._aggregator: Aggregator | None = None
        self._tasks = 0

    def required_modules(self) -> tuple[str, ...]:
        """The optional modules this configuration needs (``requires``)."""
        return self.requires

    @abstractmethod
    def build_aggregator(self, tasks: int) -> Aggregator:
        """The torchjd aggregator for ``tasks`` rows."""

    def aggregator(self, tasks: int) -> Aggregator:
        """The aggregator for this many tasks (built once, rebuilt when the count changes)."""
        if self._aggregator is None or tasks != self._tasks:
            self._aggregator, self._tasks = self.build_aggregator(tasks), tasks
        return self._aggregator

    def gramian_input(self, gram: torch.Tensor) -> torch.Tensor:
        """What the weighting reads: the Gram matrix of the weighted rows, as it is."""
        return gram

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """The torchjd weighting on the Gram matrix of the weighted rows ``w_t g_t``.

        Raises:
            NotImplementedError: For an aggregator that is not a torchjd ``WeightedAggregator``.
        """
        from torchjd.aggregation import GramianWeightedAggregator, WeightedAggregator

        aggregator = self.aggregator(gram.shape[0])
        weighted = self.gramian_input(weights[:, None] * gram * weights[None, :])
        if isinstance(aggregator, GramianWeightedAggregator):
            aggregation_weights = aggregator.gramian_weighting(weighted)
        elif isinstance(aggregator, WeightedAggregator):
            aggregation_weights = aggregator.weighting(gram_factor(weighted))
        else:
            raise NotImplementedError(f"{type(aggregator).__name__} is not a weighted aggregator")
        # torchjd's weights combine the weighted rows: as coefficients of the rows, times w_t
        return Coefficients(aggregation_weights.to(device=gram.device, dtype=gram.dtype) * weights)

    def combine(self, grads: torch.Tensor, weights: torch.Tensor, epoch: int) -> Combination:
        """Through :meth:`coefficients`; an unweighted aggregator reads the weighted rows."""
        from torchjd.aggregation import WeightedAggregator

        aggregator = self.aggregator(grads.shape[0])
        if isinstance(aggregator, WeightedAggregator):
            return super().combine(grads, weights, epoch)
        return Combination(aggregator(weights[:, None] * grads))


def gram_factor(gram: torch.Tensor) -> torch.Tensor:
    """A ``[tasks, tasks]`` matrix ``F`` with ``F F^T = gram`` (negative round-off clamped)."""
    values, vectors = torch.linalg.eigh(gram.to(torch.float64))
    return (vectors * values.clamp_min(0).sqrt()).to(gram.dtype)


class PCGrad(TorchJDMethod):
    """PCGrad: project each gradient off the others it conflicts with (Yu et al., 2020)."""

    name = "pcgrad"

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``PCGrad``."""
        from torchjd import aggregation

        return aggregation.PCGrad()


class CAGrad(TorchJDMethod):
    """CAGrad: the best worst-task improvement in a ball around the mean (Liu et al., 2021).

    torchjd zeroes the step when the summed squared task-gradient norms fall under ``norm_eps``,
    an absolute threshold: gradient norms of 0.005 and 0.003, common late in training, would stop
    the encoder silently. CAGrad's weights do not depend on the scale of the gradients (torchjd
    divides the Gramian by its trace before solving), so the rows are handed to torchjd divided
    by their Frobenius norm and the weights are applied to the rows as they are: ``norm_eps`` is
    then relative. The step is zero only when every task gradient is zero, or when the
    conflict-averse combination is shorter than ``norm_eps`` times the Frobenius norm of the
    task gradients (a Pareto-stationary point, CAGrad's own rule).

    Args:
        c: Ball radius relative to the norm of the mean gradient.
        norm_eps: Relative threshold under which the step is zero (see above).
        task_weights, parameters, aggregate_at: See :class:`TorchJDMethod`.
    """

    name = "cagrad"
    requires = ("torchjd", "cvxpy", "clarabel")

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        c: float = 0.5,
        norm_eps: float = 1e-4,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        if c < 0 or norm_eps < 0:
            raise ValueError(f"c and norm_eps must be non-negative, got {c}, {norm_eps}")
        self.c, self.norm_eps = float(c), float(norm_eps)

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``CAGrad(c, norm_eps)``."""
        from torchjd import aggregation

        return aggregation.CAGrad(c=self.c, norm_eps=self.norm_eps)

    def gramian_input(self, gram: torch.Tensor) -> torch.Tensor:
        """The Gram matrix of the rows divided by their Frobenius norm (divided by its trace)."""
        trace = gram.trace()
        return gram / trace if float(trace) > 0.0 else gram

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "c": self.c, "norm_eps": self.norm_eps}


class MGDA(TorchJDMethod):
    """MGDA: the minimum-norm point of the convex hull of the gradients (Sener and Koltun, 2018).

    Args:
        epsilon: Frank-Wolfe stopping tolerance.
        max_iters: Frank-Wolfe iterations.
        task_weights, parameters, aggregate_at: See :class:`TorchJDMethod`.
    """

    name = "mgda"

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        epsilon: float = 1e-3,
        max_iters: int = 100,
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        if epsilon <= 0 or max_iters < 1:
            raise ValueError(f"need epsilon > 0 and max_iters >= 1, got {epsilon}, {max_iters}")
        self.epsilon, self.max_iters = float(epsilon), int(max_iters)

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``MGDA(epsilon, max_iters)``."""
        from torchjd import aggregation

        return aggregation.MGDA(epsilon=self.epsilon, max_iters=self.max_iters)

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "epsilon": self.epsilon, "max_iters": self.max_iters}


class NashMTL(TorchJDMethod):
    """Nash-MTL: the Nash bargaining solution among the tasks (Navon et al., 2022).

    The weights ``alpha`` of the weighted rows solve ``(G G^T) alpha = 1 / alpha`` (elementwise,
    ``alpha > 0``), and the direction ``alpha @ G`` is clipped to ``max_norm``. Two solvers:

    * ``"newton"`` (default): that equation is the stationarity condition of the strictly convex
      ``f(alpha) = alpha^T (G G^T) alpha / 2 - sum_t log alpha_t``, so damped Newton steps on
      ``f`` reach it to machine precision in a few ``[tasks, tasks]`` solves (well under a
      millisecond; :func:`nash_bargaining_weights`). Where no solution exists (the paper is
      silent) we choose: a task with a zero gradient gets weight 0, and an exactly opposed pair
      gets large finite weights (a ridge), which the clip then scales down.
    * ``"ccp"``: torchjd's ``NashMTL``, the paper's sequence of convex problems solved by ECOS
      (up to ``optim_niter`` solves a step, 8-250 ms), warm-started from the previous step's
      weights. Where it converges it gives the same weights; but it does not converge when the
      gradients are small: with Gram entries under about 1e-4 (gradient entries of 1e-3 and
      less, common at the representation) ECOS fails and the weights stay at their start (all
      ones, or the previous step's), far from ``G G^T alpha = 1 / alpha``. Measured on the
      default network (resnet18, 128 px): at the parameters both solvers agree to 1e-7; at the
      representation (Gram entries near 1e-5) the ``"ccp"`` weights miss the equation by
      0.01-0.3 within three steps, while ``"newton"`` meets it to 1e-9.

    The weights between updates (``update_weights_every``) are per process and not in the
    checkpoint: a resumed run solves afresh at its first step (under DDP the combined gradient is
    what is synchronised).

    Args:
        max_norm: Clip the aggregated gradient to this norm (0 disables). At the exact solution
            ``||alpha @ G||^2 = alpha^T (G G^T) alpha = tasks``, so any ``max_norm`` under
            ``sqrt(tasks)`` fixes the norm of every step.
        update_weights_every: Solve for new weights every this many steps.
        optim_niter: Iterations of the ``"ccp"`` solver's inner procedure.
        solver: ``"newton"`` or ``"ccp"`` (see above).
        task_weights, parameters, aggregate_at: See :class:`TorchJDMethod`.
    """

    name = "nash_mtl"
    requires = ("torchjd", "cvxpy", "ecos")

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        max_norm: float = 1.0,
        update_weights_every: int = 1,
        optim_niter: int = 20,
        solver: Literal["newton", "ccp"] = "newton",
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        if solver not in ("newton", "ccp"):
            raise ValueError(f"solver must be 'newton' or 'ccp', got {solver!r}")
        self.solver: Literal["newton", "ccp"] = solver
        super().__init__(task_weights, parameters, aggregate_at)
        if max_norm < 0 or update_weights_every < 1 or optim_niter < 1:
            raise ValueError(
                "need max_norm >= 0, update_weights_every >= 1, optim_niter >= 1, got "
                f"{max_norm}, {update_weights_every}, {optim_niter}"
            )
        self.max_norm = float(max_norm)
        self.update_weights_every, self.optim_niter = int(update_weights_every), int(optim_niter)
        self._solved: torch.Tensor | None = None
        self._steps = 0

    def required_modules(self) -> tuple[str, ...]:
        """The ``"ccp"`` solver needs torchjd, cvxpy and ecos; ``"newton"`` nothing beyond torch."""
        return self.requires if self.solver == "ccp" else ()

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``NashMTL`` for ``tasks`` tasks (the ``"ccp"`` solver)."""
        from torchjd import aggregation

        return aggregation.NashMTL(
            n_tasks=tasks,
            max_norm=self.max_norm,
            update_weights_every=self.update_weights_every,
            optim_niter=self.optim_niter,
        )

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """The Nash weights of the weighted rows ``w_t g_t``, clipped, times ``w_t``."""
        if self.solver == "ccp":
            return super().coefficients(gram, weights, epoch)
        weighted = (weights[:, None] * gram * weights[None, :]).to(torch.float64)
        alpha = self._solved
        if (
            alpha is None
            or alpha.shape[0] != gram.shape[0]
            or self._steps % self.update_weights_every == 0
        ):
            alpha = self._solved = nash_bargaining_weights(weighted)
        self._steps += 1
        if self.max_norm > 0:
            norm = float(alpha @ weighted @ alpha) ** 0.5
            if norm > self.max_norm:
                alpha = alpha * (self.max_norm / norm)
        return Coefficients(alpha.to(device=gram.device, dtype=gram.dtype) * weights)

    def _describe(self) -> dict[str, Any]:
        return {
            **super()._describe(),
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "optim_niter": self.optim_niter,
            "solver": self.solver,
        }


def nash_bargaining_weights(
    gram: torch.Tensor, ridge: float = 1e-9, tolerance: float = 1e-12, max_iterations: int = 100
) -> torch.Tensor:
    """The positive ``alpha`` with ``gram @ alpha = 1 / alpha``, by damped Newton steps.

    With ``D = diag(gram)^(-1/2)`` the equation is ``C beta = 1 / beta`` on the correlation
    matrix ``C = D gram D`` and ``alpha = D beta``, so the solve does not see the gradients'
    scales. ``beta`` minimises ``f(beta) = beta^T (C + ridge I) beta / 2 - sum log beta``, a
    self-concordant function: the damped step ``1 / (1 + lambda)`` (``lambda`` the Newton
    decrement) keeps ``beta`` positive and converges from any positive start, and the steps
    become full Newton steps, converging quadratically, near the solution. The ridge makes an
    exactly opposed pair of gradients (``C`` singular, no solution) give large finite weights.

    Args:
        gram: ``[tasks, tasks]`` Gram matrix of the (weighted) task gradients.
        ridge: Added to the correlation matrix's diagonal.
        tolerance: Stop when every ``beta_t ((C + ridge I) beta)_t`` is within it of 1.
        max_iterations: Newton steps at most.

    Returns:
        ``alpha`` in float64. A task whose gradient is zero gets weight 0 (its weight changes
        nothing) and the others are solved among themselves.
    """
    gram = gram.to(torch.float64)
    norms_squared = gram.diagonal()
    alive = norms_squared > 0
    alpha = torch.zeros_like(norms_squared)
    if not bool(alive.any()):
        return alpha
    inverse_norms = norms_squared[alive].rsqrt()
    correlation = inverse_norms[:, None] * gram[alive][:, alive] * inverse_norms[None, :]
    kernel = correlation + ridge * torch.eye(len(inverse_norms), dtype=torch.float64)
    beta = torch.ones_like(inverse_norms)  # the solution when the gradients are orthogonal
    for _ in range(max_iterations):
        gradient = kernel @ beta - 1.0 / beta
        if float((gradient * beta).abs().max()) < tolerance:
            break
        step = torch.linalg.solve(kernel + torch.diag(beta.pow(-2)), gradient)
        decrement = float(gradient @ step) ** 0.5
        beta = beta - step / (1.0 + decrement)
    alpha[alive] = inverse_norms * beta
    return alpha


class IMTLG(TorchJDMethod):
    """IMTL-G: the combination with equal projections on every task gradient (Liu et al., 2021)."""

    name = "imtl_g"

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``IMTLG``."""
        from torchjd import aggregation

        return aggregation.IMTLG()


class AlignedMTL(TorchJDMethod):
    """Aligned-MTL: align the principal components of the gradients (Senushkin et al., 2023).

    Args:
        scale_mode: Eigenvalue used for scaling: ``"min"``, ``"median"`` or ``"rmse"``.
        task_weights, parameters, aggregate_at: See :class:`TorchJDMethod`.
    """

    name = "aligned_mtl"

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        scale_mode: Literal["min", "median", "rmse"] = "min",
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(f"scale_mode must be min, median or rmse, got {scale_mode!r}")
        self.scale_mode: Literal["min", "median", "rmse"] = scale_mode

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``AlignedMTL(scale_mode)``."""
        from torchjd import aggregation

        return aggregation.AlignedMTL(scale_mode=self.scale_mode)

    def _describe(self) -> dict[str, Any]:
        return {**super()._describe(), "scale_mode": self.scale_mode}


class UPGrad(TorchJDMethod):
    """UPGrad: each gradient projected onto the dual cone of all, averaged (Quinton, Rey 2024)."""

    name = "upgrad"
    requires = ("torchjd", "qpsolvers", "quadprog")

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``UPGrad`` with its default quadprog projector."""
        from torchjd import aggregation

        return aggregation.UPGrad()
