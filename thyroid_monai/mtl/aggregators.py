"""The standard conflict-aware aggregators, through the ``torchjd`` library.

Each class builds one torchjd aggregator and applies its weighting to the Gram matrix of the task
gradients that :class:`~thyroid_monai.mtl.base.GradientAggregator` computed; nothing of the
aggregation itself is written here. Every aggregator used here is a torchjd ``WeightedAggregator``
(the direction is ``weights @ matrix``): the Gramian-weighted ones read ``G G^T`` by definition,
and Nash-MTL's weighting reads the matrix only through ``G G^T`` and ``||weights @ G||`` (torchjd
0.18), so it is handed a ``[tasks, tasks]`` factor ``F`` with ``F F^T = G G^T``: no step builds
the ``[tasks, params]`` matrix. The task weights scale each task's gradient row before
aggregation (they weight the losses). torchjd and its solvers (cvxpy, clarabel, ecos, qpsolvers,
quadprog) come with the ``mtl`` extra: ``pip install 'thyroid-monai[mtl]'``.
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
        require_modules(type(self).__name__, self.requires)
        self._aggregator: Aggregator | None = None
        self._tasks = 0

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

    Stateful: it warm-starts from the previous step's weights (per process; under DDP the
    combined gradient is what is synchronised). torchjd keeps that state internally, so it is not
    in the checkpoint: a resumed run starts the warm start afresh.

    Args:
        max_norm: Clip the aggregated gradient to this norm (0 disables).
        update_weights_every: Solve for new weights every this many steps.
        optim_niter: Iterations of the inner convex-concave procedure.
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
        parameters: ParameterSet = "shared",
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        if max_norm < 0 or update_weights_every < 1 or optim_niter < 1:
            raise ValueError(
                "need max_norm >= 0, update_weights_every >= 1, optim_niter >= 1, got "
                f"{max_norm}, {update_weights_every}, {optim_niter}"
            )
        self.max_norm = float(max_norm)
        self.update_weights_every, self.optim_niter = int(update_weights_every), int(optim_niter)

    def build_aggregator(self, tasks: int) -> Aggregator:
        """Torchjd ``NashMTL`` for ``tasks`` tasks."""
        from torchjd import aggregation

        return aggregation.NashMTL(
            n_tasks=tasks,
            max_norm=self.max_norm,
            update_weights_every=self.update_weights_every,
            optim_niter=self.optim_niter,
        )

    def _describe(self) -> dict[str, Any]:
        return {
            **super()._describe(),
            "max_norm": self.max_norm,
            "update_weights_every": self.update_weights_every,
            "optim_niter": self.optim_niter,
        }


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
