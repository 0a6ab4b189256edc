"""CAME-Grad: conflict-averse, magnitude-enhanced gradient descent (arXiv 2605.22635, ICML 2026).

Per step, from the task gradients ``g_i`` (rows of the ``[tasks, params]`` matrix) and the task
weights ``w_i`` of the joint objective (paper equations 8-14, as recovered in
``docs/papers.md`` 2.3):

    g_joint = sum_i w_i g_i                       joint (linear-scalarisation) gradient
    mu      = mean_i g_i                          trust-region centre (unweighted)
    Stage 1 (rectification, CAGrad with c = rho):
        alpha* = argmin_{alpha in simplex} <g_alpha, mu> + rho ||mu|| ||g_alpha||
        u_rect = mu + rho ||mu|| g_alpha* / ||g_alpha*||
    Stage 2 (energy injection):  u_en = u_rect * kappa ||g_joint|| / ||u_rect||
    Stage 3 (fusion):            g_final = (1 - nu) u_en + nu g'_joint,  g'_joint = kappa g_joint

Every quantity is a linear combination of the task gradients, so everything is computed on the
small Gram matrix ``G G^T`` (in float64) and the update is one product ``c @ G``: the cost over
plain multitask learning is the per-task backward passes, not the aggregation.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import minimize

from thyroid_monai.mtl.base import AggregateAt, Coefficients, GradientAggregator, ParameterSet
from thyroid_monai.mtl.gradients import accumulation_dtype

MeanKind = Literal["unweighted", "weighted"]
FusionKind = Literal["scaled", "raw"]

# Which fallback a step took, logged as the float ``came_fallback`` (its epoch mean is 0 exactly
# when no step of the epoch fell back).
NO_FALLBACK, MEAN_FALLBACK, JOINT_FALLBACK = 0, 1, 2


@dataclass(frozen=True)
class CameGradCoefficients:
    """The CAME-Grad directions as coefficients of the task gradients.

    Attributes:
        rectified: Stage 1, ``u_rect = rectified @ G``.
        final: Stage 3, ``g_final = final @ G`` (the effective task weights).
        alpha: The dual solution on the simplex (NaN-free; uniform when unused).
        fallback: ``NO_FALLBACK``, ``MEAN_FALLBACK`` (``g_alpha*`` ~ 0: ``u_rect = mu``) or
            ``JOINT_FALLBACK`` (``mu`` ~ 0 or ``u_rect`` ~ 0: ``u_rect = g_joint``).
    """

    rectified: torch.Tensor
    final: torch.Tensor
    alpha: torch.Tensor
    fallback: int


def _quadratic(gram: np.ndarray, coefficients: np.ndarray) -> float:
    """``||coefficients @ G||`` from the Gram matrix (clamped at 0 against round-off)."""
    return math.sqrt(max(float(coefficients @ gram @ coefficients), 0.0))


def _dual_two_tasks(gram: np.ndarray, linear: np.ndarray, radius: float) -> np.ndarray:
    """Exact minimiser of ``F(a) = <alpha, linear> + radius ||g_alpha||``, ``alpha = (a, 1-a)``.

    ``||g_alpha||^2 = A s^2 + q_min`` with ``s = a - a_min``, so ``F'(a) = d + radius A s /
    sqrt(A s^2 + q_min)`` with ``d = linear[0] - linear[1]``. F is convex: its stationary point, if
    any, solves a quadratic in ``s``; otherwise the minimum sits at the end that ``d`` points away
    from. Clipping the stationary point to [0, 1] gives the constrained minimum.
    """
    curvature = gram[0, 0] - 2 * gram[0, 1] + gram[1, 1]  # ||g_0 - g_1||^2
    slope = float(linear[0] - linear[1])
    scale = max(gram[0, 0], gram[1, 1], 1e-300)
    if curvature <= 1e-12 * scale or radius == 0.0:
        # ||g_alpha|| is constant (g_0 = g_1) or does not count: F is linear in a.
        a = 0.5 if slope == 0.0 else float(slope < 0)
        return np.array([a, 1.0 - a])
    a_min = (gram[1, 1] - gram[0, 1]) / curvature  # argmin of ||g_alpha||
    q_min = max(gram[1, 1] - curvature * a_min**2, 0.0)
    if slope**2 >= radius**2 * curvature:
        a = float(slope < 0)
    else:
        s = -math.copysign(1.0, slope) * abs(slope) * math.sqrt(q_min)
        s /= math.sqrt(curvature * (radius**2 * curvature - slope**2))
        a = min(max(a_min + s, 0.0), 1.0)
    return np.array([a, 1.0 - a])


def _dual_slsqp(
    gram: np.ndarray, linear: np.ndarray, radius: float, max_iter: int, tol: float
) -> np.ndarray:
    """Minimises ``F(alpha)`` over the simplex by sequential quadratic programming (SLSQP).

    SLSQP is the solver of CAGrad's reference code; the problem has one unknown per task.
    """
    tasks = len(linear)
    # F scales with the squared gradient norm; solving the normalised problem makes the
    # tolerance, and so the answer, independent of that scale.
    scale = max(float(np.max(np.diag(gram))), 1e-300)
    gram, linear, radius = gram / scale, linear / scale, radius / math.sqrt(scale)
    floor = 1e-30

    def objective(alpha: np.ndarray) -> tuple[float, np.ndarray]:
        g_alpha = gram @ alpha
        norm = math.sqrt(max(float(alpha @ g_alpha), floor))
        return float(alpha @ linear) + radius * norm, linear + radius * g_alpha / norm

    result = minimize(
        objective,
        np.full(tasks, 1.0 / tasks),
        jac=True,
        method="SLSQP",
        bounds=[(0.0, 1.0)] * tasks,
        constraints=[
            {"type": "eq", "fun": lambda a: a.sum() - 1.0, "jac": lambda a: np.ones(tasks)}
        ],
        options={"maxiter": max_iter, "ftol": tol},
    )
    alpha = np.clip(np.nan_to_num(result.x, nan=1.0 / tasks), 0.0, None)
    return alpha / alpha.sum() if alpha.sum() > 0 else np.full(tasks, 1.0 / tasks)


def came_grad_coefficients(
    gram: torch.Tensor,
    weights: torch.Tensor,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    eps: float = 1e-8,
    mean: MeanKind = "unweighted",
    fusion: FusionKind = "scaled",
    dual_max_iter: int = 100,
    dual_tol: float = 1e-12,
) -> CameGradCoefficients:
    """CAME-Grad on the Gram matrix of the task gradients; see :func:`came_grad_direction`.

    Args:
        gram: ``[tasks, tasks]`` Gram matrix ``G G^T``.
        weights: Task weights of the joint gradient.
        rho: See :class:`CameGrad`.
        kappa: See :class:`CameGrad`.
        nu: See :class:`CameGrad`.
        eps: See :class:`CameGrad`.
        mean: See :class:`CameGrad`.
        fusion: See :class:`CameGrad`.
        dual_max_iter: See :class:`CameGrad`.
        dual_tol: See :class:`CameGrad`.

    Returns:
        The stage directions as coefficients of the task gradients (float64).
    """
    tasks = gram.shape[0]
    if gram.shape != (tasks, tasks) or weights.shape != (tasks,) or tasks == 0:
        raise ValueError(f"Gram matrix {tuple(gram.shape)} and weights {tuple(weights.shape)}")
    q = gram.detach().to(torch.float64).cpu().numpy()
    w = weights.detach().to(torch.float64).cpu().numpy()
    weighted_centre = mean == "weighted" and w.sum() > 0
    centre = w / w.sum() if weighted_centre else np.full(tasks, 1.0 / tasks)
    tiny = eps * math.sqrt(max(float(np.max(np.diag(q))), 0.0))
    mean_norm = _quadratic(q, centre)
    alpha = np.full(tasks, 1.0 / tasks)
    fallback = NO_FALLBACK
    if mean_norm <= tiny:
        rectified, fallback = w.copy(), JOINT_FALLBACK
    else:
        radius = rho * mean_norm
        linear = q @ centre  # <g_i, mu>
        if tasks == 1:
            alpha = np.ones(1)
        elif tasks == 2:
            alpha = _dual_two_tasks(q, linear, radius)
        else:
            alpha = _dual_slsqp(q, linear, radius, dual_max_iter, dual_tol)
        alpha_norm = _quadratic(q, alpha)
        if alpha_norm <= tiny:
            rectified, fallback = centre.copy(), MEAN_FALLBACK
        else:
            rectified = centre + (radius / alpha_norm) * alpha
    rectified_norm = _quadratic(q, rectified)
    if rectified_norm <= tiny and fallback != JOINT_FALLBACK:
        rectified, fallback = w.copy(), JOINT_FALLBACK
        rectified_norm = _quadratic(q, rectified)
    joint_norm = _quadratic(q, w)
    energised = (
        rectified * (kappa * joint_norm / rectified_norm) if rectified_norm > tiny else 0 * w
    )
    fused_joint = kappa * w if fusion == "scaled" else w
    final = (1.0 - nu) * energised + nu * fused_joint
    return CameGradCoefficients(
        torch.from_numpy(rectified), torch.from_numpy(final), torch.from_numpy(alpha), fallback
    )


def came_grad_direction(
    grads: torch.Tensor,
    weights: torch.Tensor,
    *,
    rho: float = 0.5,
    kappa: float = 1.5,
    nu: float = 0.2,
    **options: Any,
) -> torch.Tensor:
    """The CAME-Grad update direction: a pure function of the task gradients.

    Args:
        grads: ``[tasks, params]`` task gradients.
        weights: ``[tasks]`` task weights of the joint gradient ``g_joint = weights @ grads``.
        rho: Trust-region radius, relative to the norm of the mean gradient.
        kappa: Magnitude gain: the rectified direction is rescaled to ``kappa ||g_joint||``.
        nu: Fusion coefficient with ``g'_joint``.
        **options: ``eps``, ``mean``, ``fusion``, ``dual_max_iter``, ``dual_tol`` (see
            :class:`CameGrad`).

    Returns:
        ``g_final`` (``[params]``), accumulated in float32 or the gradients' wider type.
    """
    matrix = grads.to(accumulation_dtype(grads.dtype))
    coefficients = came_grad_coefficients(
        matrix @ matrix.T, weights, rho=rho, kappa=kappa, nu=nu, **options
    )
    return coefficients.final.to(device=matrix.device, dtype=matrix.dtype) @ matrix


class CameGrad(GradientAggregator):
    """CAME-Grad as a gradient method (defaults: rho 0.5, kappa 1.5, nu 0.2, as the authors' code).

    The choices the paper leaves open (``docs/papers.md`` 2.4 and 2.6), each an argument:

    * ``mean``: the trust-region centre ``mu`` is the ``"unweighted"`` mean of the task gradients
      (default, as both TeX-based reimplementations) or the ``"weighted"`` mean ``sum w_i g_i /
      sum w_i``; the task weights always enter ``g_joint``.
    * ``parameters``: ``"all"`` trainable parameters flattened together (default, as the paper; a
      head's gradient is zero for the other tasks) or only the ``"shared"`` encoder (CAGrad-style;
      heads then get the joint-objective gradient).
    * ``aggregate_at``: the encoder's ``"parameters"`` (default, as the paper) or its output maps
      (``"representation"``, cheaper; see :mod:`thyroid_monai.mtl.base` for the approximation).
    * ``fusion``: ``g'_joint = kappa g_joint`` (``"scaled"``, default, as both audits) or the
      ``"raw"`` ``g_joint``.
    * Dual solver: exact closed form for two tasks; for more, SLSQP (a sequence of small quadratic
      programs, as CAGrad's reference code) with ``dual_max_iter`` and ``dual_tol``.
    * ``eps``: "near zero" means a norm at most ``eps`` times the largest task-gradient norm
      (default 1e-8, scale-free). If ``||g_alpha*||`` is near zero, ``u_rect = mu``; if
      ``||mu||`` or ``u_rect`` is, ``u_rect = g_joint``; if that is zero too, Stage 2 gives zero
      (opposite gradients of equal size with equal weights yield a zero step, never NaN). With
      ``rho >= 1`` at a Pareto-stationary point (0 in the hull of the task gradients) CAGrad's
      answer is the zero step; here ``g_alpha* = 0`` means "no conflict-averse correction", so
      the step is the mean direction, rescaled as always. Stage 2
      divides by ``||u_rect||`` itself once the fallbacks guarantee it is not near zero, so the
      target norm is met exactly.
    * ``max_norm``: clip ``g_final`` to this global norm (0, the default, disables clipping).
      ``docs/papers.md`` suggests 1.0 after the scaling; clipping is left off by default so that
      every method in a comparison sees the same optimiser settings.
    * The base optimiser is the bundle's (AdamW): this class only writes ``.grad``. Under AdamW
      ``kappa`` is nearly a no-op (Adam is scale-invariant), under SGD it scales the step.
    * Precision: gradients and the Gram matrix are accumulated in float32 (or wider), the dual in
      float64; the trainer refuses mixed precision.

    Args:
        task_weights: Weights ``w_i`` of the joint gradient (1 when absent).
        rho: Trust-region radius relative to ``||mu||`` (>= 0); CAGrad's ``c``.
        kappa: Magnitude gain (> 0).
        nu: Fusion coefficient in [0, 1]; the appendix warns that nu > 0.3 brings conflict back.
        mean: ``"unweighted"`` or ``"weighted"``.
        fusion: ``"scaled"`` or ``"raw"``.
        parameters: ``"all"`` or ``"shared"``.
        aggregate_at: ``"parameters"`` or ``"representation"``.
        eps: Relative threshold of the fallbacks (> 0).
        max_norm: Global-norm clipping of ``g_final`` (0 disables).
        dual_max_iter: SLSQP iterations for more than two tasks.
        dual_tol: SLSQP tolerance.
    """

    name = "camegrad"

    def __init__(
        self,
        task_weights: Mapping[str, float] | None = None,
        rho: float = 0.5,
        kappa: float = 1.5,
        nu: float = 0.2,
        mean: MeanKind = "unweighted",
        fusion: FusionKind = "scaled",
        parameters: ParameterSet = "all",
        eps: float = 1e-8,
        max_norm: float = 0.0,
        dual_max_iter: int = 100,
        dual_tol: float = 1e-12,
        aggregate_at: AggregateAt = "parameters",
    ):
        super().__init__(task_weights, parameters, aggregate_at)
        checks = {
            "rho >= 0": rho >= 0,
            "kappa > 0": kappa > 0,
            "0 <= nu <= 1": 0 <= nu <= 1,
            "eps > 0": eps > 0,
            "max_norm >= 0": max_norm >= 0,
            "dual_max_iter >= 1": dual_max_iter >= 1,
            "dual_tol > 0": dual_tol > 0,
            "mean in (unweighted, weighted)": mean in ("unweighted", "weighted"),
            "fusion in (scaled, raw)": fusion in ("scaled", "raw"),
        }
        failed = [rule for rule, ok in checks.items() if not ok]
        if failed:
            raise ValueError(f"CameGrad arguments violate: {', '.join(failed)}")
        self.rho, self.kappa, self.nu = float(rho), float(kappa), float(nu)
        self.mean: MeanKind = mean
        self.fusion: FusionKind = fusion
        self.eps, self.max_norm = float(eps), float(max_norm)
        self.dual_max_iter, self.dual_tol = int(dual_max_iter), float(dual_tol)

    def coefficients(self, gram: torch.Tensor, weights: torch.Tensor, epoch: int) -> Coefficients:
        """Stages 1-3 on the Gram matrix (``g_final = c @ G``), clipped if configured."""
        found = came_grad_coefficients(
            gram,
            weights,
            rho=self.rho,
            kappa=self.kappa,
            nu=self.nu,
            eps=self.eps,
            mean=self.mean,
            fusion=self.fusion,
            dual_max_iter=self.dual_max_iter,
            dual_tol=self.dual_tol,
        )
        final = found.final
        if self.max_norm > 0:
            # ||c @ G|| from the Gram matrix, in float64 like the coefficients
            norm = math.sqrt(max(float(final @ gram.to(torch.float64).cpu() @ final), 0.0))
            if norm > self.max_norm:
                final = final * (self.max_norm / norm)
        return Coefficients(
            final.to(device=gram.device, dtype=gram.dtype),
            {"came_fallback": float(found.fallback)},
        )

    def _describe(self) -> dict[str, Any]:
        return {
            **super()._describe(),
            "rho": self.rho,
            "kappa": self.kappa,
            "nu": self.nu,
            "mean": self.mean,
            "fusion": self.fusion,
            "eps": self.eps,
            "max_norm": self.max_norm,
        }
