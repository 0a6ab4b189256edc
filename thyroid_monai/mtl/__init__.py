"""Multitask optimisation: gradient methods behind one interface and one registry.

``sum`` (plain multitask learning, equal weights by default), ``uncertainty`` and ``gradnorm``
(loss weighting), ``camegrad`` (CAME-Grad) and, through torchjd (``mtl`` extra), ``pcgrad``,
``cagrad``, ``mgda``, ``nash_mtl``, ``imtl_g``, ``aligned_mtl`` and ``upgrad``. Every method
takes its per-task gradients from one engine (:mod:`thyroid_monai.mtl.gradients`), at the shared
parameters or (``aggregate_at="representation"``) at the shared encoder's output maps.
"""

from thyroid_monai.mtl.aggregators import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    NashMTL,
    PCGrad,
    TorchJDMethod,
    UPGrad,
)
from thyroid_monai.mtl.base import (
    AGGREGATE_AT,
    Coefficients,
    Combination,
    GradientAggregator,
    GradientMethod,
    WeightedSum,
)
from thyroid_monai.mtl.camegrad import CameGrad, came_grad_coefficients, came_grad_direction
from thyroid_monai.mtl.diagnostics import gradient_diagnostics
from thyroid_monai.mtl.gradients import (
    PhaseTimer,
    Representation,
    TaskGradients,
    representation_cut,
    task_gradients,
)
from thyroid_monai.mtl.registry import GRADIENT_METHODS, build_gradient_method
from thyroid_monai.mtl.weighting import GradNorm, UncertaintyWeighting

__all__ = [
    "AGGREGATE_AT",
    "GRADIENT_METHODS",
    "IMTLG",
    "MGDA",
    "AlignedMTL",
    "CAGrad",
    "CameGrad",
    "Coefficients",
    "Combination",
    "GradNorm",
    "GradientAggregator",
    "GradientMethod",
    "NashMTL",
    "PCGrad",
    "PhaseTimer",
    "Representation",
    "TaskGradients",
    "TorchJDMethod",
    "UPGrad",
    "UncertaintyWeighting",
    "WeightedSum",
    "build_gradient_method",
    "came_grad_coefficients",
    "came_grad_direction",
    "gradient_diagnostics",
    "representation_cut",
    "task_gradients",
]
