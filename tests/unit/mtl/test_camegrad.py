"""Properties of CAME-Grad on random gradient matrices (no network)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torchjd.aggregation import CAGrad

from thyroid_monai.mtl import CameGrad, came_grad_coefficients, came_grad_direction
from thyroid_monai.mtl.camegrad import JOINT_FALLBACK, MEAN_FALLBACK, _dual_slsqp, _dual_two_tasks

PROPERTY = settings(max_examples=40, deadline=None)


@st.composite
def gradient_problems(draw, min_tasks=2, max_tasks=5):
    """A [tasks, params] float64 matrix with conflicts, and non-negative task weights."""
    tasks = draw(st.integers(min_tasks, max_tasks))
    params = draw(st.integers(2, 24))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    grads = torch.randn(tasks, params, generator=generator, dtype=torch.float64)
    grads *= torch.exp(torch.randn(tasks, 1, generator=generator, dtype=torch.float64))
    if draw(st.booleans()):  # a strongly conflicting pair
        grads[1] = -draw(st.floats(0.1, 10.0)) * grads[0] + 0.1 * grads[1]
    weights = torch.tensor(
        draw(st.lists(st.floats(0.1, 5.0), min_size=tasks, max_size=tasks)), dtype=torch.float64
    )
    return grads, weights


def cosine(a, b):
    return float(a @ b / (a.norm() * b.norm()))


@PROPERTY
@given(gradient_problems(), st.floats(0.0, 2.0))
def test_nu_one_and_kappa_one_give_the_joint_gradient(problem, rho):
    grads, weights = problem
    direction = came_grad_direction(grads, weights, rho=rho, kappa=1.0, nu=1.0)
    joint = weights @ grads
    assert torch.allclose(direction, joint, rtol=1e-10, atol=1e-12 * float(joint.norm()))


@PROPERTY
@given(gradient_problems(), st.sampled_from([0.0, 1e-9, 1e-6]), st.floats(0.5, 3.0))
def test_vanishing_trust_region_gives_the_mean_direction_at_kappa_times_joint_norm(
    problem, rho, kappa
):
    grads, weights = problem
    mean = grads.mean(dim=0)
    assume(float(mean.norm()) > 1e-3 * float(grads.norm(dim=1).max()))
    direction = came_grad_direction(grads, weights, rho=rho, kappa=kappa, nu=0.0)
    assert cosine(direction, mean) == pytest.approx(1.0, abs=1e-5)
    assert float(direction.norm()) == pytest.approx(kappa * float((weights @ grads).norm()))


@settings(max_examples=25, deadline=None)
@given(gradient_problems(), st.floats(0.05, 0.95))
def test_stage_one_is_cagrad_with_c_equal_to_rho(problem, rho):
    # CAGrad's convergent range is c < 1; rho >= 1 differs on purpose (next test).
    grads, weights = problem
    mean = grads.mean(dim=0)
    assume(float(mean.norm()) > 1e-3 * float(grads.norm(dim=1).max()))
    rectified = came_grad_coefficients(grads @ grads.T, weights, rho=rho).rectified @ grads
    reference = CAGrad(c=rho, norm_eps=0.0)(grads)
    # torchjd solves the dual with an interior-point solver whose tolerance is relative to the
    # scale of the problem, not of the answer: when the CAGrad direction nearly vanishes (rho
    # large, conflicting tasks) both solvers return "zero" up to ~1e-6 of the task gradients.
    scale = float(grads.norm(dim=1).max())
    assert torch.allclose(rectified, reference, rtol=1e-3, atol=1e-4 * scale)


def test_pareto_stationary_tasks_with_rho_at_least_one_fall_back_to_the_mean():
    # 0 lies in the convex hull of these gradients (Pareto-stationary point) and the trust region
    # (rho >= 1) contains d = 0, where CAGrad's answer is the zero step. CAME-Grad documents a
    # different choice: g_alpha* = 0 means "no conflict-averse correction", so u_rect = mu, and
    # the step keeps the mean's direction. (What a third-party solver returns at this degenerate
    # point is not this project's contract.)
    grads = torch.tensor([[2.0, 1.0, 0.0], [-1.0, -0.5, 0.0]], dtype=torch.float64)
    weights = torch.ones(2, dtype=torch.float64)
    coefficients = came_grad_coefficients(grads @ grads.T, weights, rho=1.5)
    assert coefficients.fallback == MEAN_FALLBACK
    assert torch.allclose(coefficients.rectified @ grads, grads.mean(dim=0))
    direction = came_grad_direction(grads, weights, rho=1.5, nu=0.0)
    assert cosine(direction, grads.mean(dim=0)) == pytest.approx(1.0)


@PROPERTY
@given(gradient_problems(), st.randoms(use_true_random=False))
def test_result_does_not_depend_on_task_order(problem, random):
    grads, weights = problem
    order = list(range(grads.shape[0]))
    random.shuffle(order)
    direction = came_grad_direction(grads, weights)
    permuted = came_grad_direction(grads[order], weights[order])
    assert torch.allclose(direction, permuted, rtol=1e-5, atol=1e-5 * float(direction.norm()))


@PROPERTY
@given(gradient_problems(), st.floats(1e-3, 1e3))
def test_direction_scales_linearly_with_the_gradients(problem, scale):
    grads, weights = problem
    direction = came_grad_direction(grads, weights)
    scaled = came_grad_direction(scale * grads, weights)
    assert torch.allclose(scaled, scale * direction, rtol=1e-5, atol=1e-6 * scale)


@PROPERTY
@given(gradient_problems(), st.floats(0.05, 0.95), st.integers(0, 2**31 - 1))
def test_rectified_direction_is_the_best_worst_case_in_its_trust_region(problem, rho, seed):
    grads, weights = problem
    mean = grads.mean(dim=0)
    assume(float(mean.norm()) > 1e-3 * float(grads.norm(dim=1).max()))
    rectified = came_grad_coefficients(grads @ grads.T, weights, rho=rho).rectified @ grads
    radius = rho * float(mean.norm())
    assert float((rectified - mean).norm()) <= radius * (1 + 1e-6)
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randn(200, grads.shape[1], generator=generator, dtype=torch.float64)
    offsets /= offsets.norm(dim=1, keepdim=True)
    offsets *= radius * torch.rand(200, 1, generator=generator, dtype=torch.float64) ** 0.5
    candidates = mean + offsets
    best = float((grads @ rectified).min())
    assert best >= float((candidates @ grads.T).min(dim=1).values.max()) - 1e-6 * radius**2


@PROPERTY
@given(gradient_problems(), st.floats(0.5, 3.0))
def test_stage_two_restores_kappa_times_the_joint_norm(problem, kappa):
    grads, weights = problem
    assume(float(grads.mean(dim=0).norm()) > 1e-3 * float(grads.norm(dim=1).max()))
    direction = came_grad_direction(grads, weights, kappa=kappa, nu=0.0)
    assert float(direction.norm()) == pytest.approx(kappa * float((weights @ grads).norm()))


@PROPERTY
@given(st.integers(0, 2**31 - 1), st.floats(0.01, 100.0))
def test_exact_two_task_dual_matches_the_numerical_solver(seed, radius_scale):
    generator = torch.Generator().manual_seed(seed)
    grads = torch.randn(2, 6, generator=generator, dtype=torch.float64)
    gram = (grads @ grads.T).numpy()
    linear = gram @ np.full(2, 0.5)
    radius = radius_scale * float(np.sqrt(np.full(2, 0.5) @ gram @ np.full(2, 0.5)))

    def objective(alpha):
        return alpha @ linear + radius * math.sqrt(max(alpha @ gram @ alpha, 0.0))

    exact = _dual_two_tasks(gram, linear, radius)
    grid = np.linspace(0.0, 1.0, 20001)
    brute = min(objective(np.array([a, 1 - a])) for a in grid)
    assert objective(exact) <= brute + 1e-9 * abs(brute) + 1e-12
    assert objective(exact) <= objective(_dual_slsqp(gram, linear, radius, 200, 1e-14)) + 1e-9


@pytest.mark.parametrize("ratio", [1.0, 3.0])
def test_exactly_opposite_gradients_give_no_nan(ratio):
    g = torch.tensor([1.0, -2.0, 0.5])
    grads = torch.stack([g, -ratio * g])
    weights = torch.ones(2)
    direction = came_grad_direction(grads, weights)
    assert torch.isfinite(direction).all()
    if ratio == 1.0:  # mean and joint gradient both vanish: no step at all
        assert torch.equal(direction, torch.zeros(3))
        fallback = came_grad_coefficients(grads @ grads.T, weights).fallback
        assert fallback == JOINT_FALLBACK
    assert torch.isfinite(came_grad_direction(torch.zeros(3, 4), torch.ones(3))).all()


def test_half_precision_gradients_accumulate_in_float32():
    grads = torch.randn(2, 10).half()
    direction = came_grad_direction(grads, torch.ones(2))
    assert direction.dtype == torch.float32


def test_arguments_are_validated_and_shown_in_repr():
    with pytest.raises(ValueError, match=r"0 <= nu <= 1.*rho >= 0|rho >= 0.*0 <= nu <= 1"):
        CameGrad(rho=-1.0, nu=2.0)
    with pytest.raises(ValueError, match="parameters must be one of"):
        CameGrad(parameters="encoder")
    assert repr(CameGrad(rho=0.3)).startswith(
        "CameGrad(parameters='all', rho=0.3, kappa=1.5, nu=0.2, mean='unweighted'"
    )


def test_weighted_mean_and_raw_fusion_options_change_the_direction():
    grads = torch.tensor([[1.0, 0.0], [-0.5, 1.0]], dtype=torch.float64)
    weights = torch.tensor([1.0, 4.0], dtype=torch.float64)
    base = came_grad_direction(grads, weights)
    assert not torch.allclose(base, came_grad_direction(grads, weights, mean="weighted"))
    raw = came_grad_direction(grads, weights, kappa=2.0, nu=1.0, fusion="raw")
    assert torch.allclose(raw, weights @ grads)


def test_clipping_bounds_the_final_gradient():
    method = CameGrad(max_norm=0.5)
    grads = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    combination = method.combine(grads, torch.ones(2), epoch=1)
    assert float(combination.vector.norm()) == pytest.approx(0.5)
    assert torch.allclose(combination.coefficients @ grads, combination.vector)
