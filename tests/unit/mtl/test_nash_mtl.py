"""Nash-MTL's own solver: the Nash bargaining weights ``G G^T alpha = 1 / alpha``, exactly."""

import warnings

import pytest
import torch

from thyroid_monai.mtl import build_gradient_method
from thyroid_monai.mtl.aggregators import NashMTL, gram_factor, nash_bargaining_weights


def random_gram(tasks: int, scale: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    rows = torch.randn(tasks, 40, generator=generator, dtype=torch.float64)
    rows *= torch.rand(tasks, 1, generator=generator, dtype=torch.float64) + 0.05
    return (rows * scale) @ (rows * scale).T


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1.0, 1e3])
@pytest.mark.parametrize("tasks", [2, 3, 5])
def test_weights_solve_the_nash_equation_at_every_scale(tasks, scale):
    for seed in range(5):
        gram = random_gram(tasks, scale, seed)
        alpha = nash_bargaining_weights(gram)
        assert bool((alpha > 0).all())
        torch.testing.assert_close(
            alpha * (gram @ alpha), torch.ones(tasks, dtype=torch.float64), rtol=0, atol=1e-7
        )


def test_weights_scale_as_the_inverse_square_root_of_the_gram():
    gram = random_gram(3, 1.0, 0)
    torch.testing.assert_close(
        nash_bargaining_weights(gram * 1e-8), nash_bargaining_weights(gram) * 1e4, rtol=1e-6, atol=0
    )


def test_weights_equal_torchjd_where_its_solver_converges():
    from torchjd import aggregation

    for seed in range(3):
        gram = random_gram(2, 1.0, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cvxpy's DPP notice
            reference = aggregation.NashMTL(n_tasks=2, max_norm=0.0).weighting(
                gram_factor(gram.float())
            )
        torch.testing.assert_close(
            nash_bargaining_weights(gram), reference.double(), rtol=1e-4, atol=0
        )


def test_a_zero_gradient_gets_weight_zero_and_an_opposed_pair_stays_finite():
    zero = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.5]], dtype=torch.float64)
    alpha = nash_bargaining_weights(zero)
    assert alpha[1] == 0
    torch.testing.assert_close(alpha[[0, 2]], torch.tensor([2.0, 0.5]).double().rsqrt())
    assert bool((nash_bargaining_weights(torch.zeros(2, 2)) == 0).all())
    opposed = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    alpha = nash_bargaining_weights(opposed)
    assert bool(torch.isfinite(alpha).all())
    assert bool((alpha > 0).all())


def test_the_step_is_clipped_to_max_norm_and_weights_follow_the_task_weights():
    method = NashMTL(task_weights={"seg": 1.0, "cls": 2.0}, max_norm=1.0)
    gram = random_gram(2, 10.0, 1)
    weights = torch.tensor([1.0, 2.0], dtype=torch.float64)
    coefficients = method.coefficients(gram, weights, epoch=1).values
    # the solution has ||alpha @ G||^2 = tasks > 1: every step is clipped to norm 1
    assert float(coefficients @ gram @ coefficients) == pytest.approx(1.0, rel=1e-9)
    alpha = coefficients / weights
    weighted = weights[:, None] * gram * weights[None, :]
    direction = alpha * (weighted @ alpha)  # proportional to 1 at the Nash solution
    torch.testing.assert_close(direction / direction[0], torch.ones(2, dtype=torch.float64))


def test_weights_are_reused_between_updates():
    method = NashMTL(max_norm=0.0, update_weights_every=2)
    ones = torch.ones(2, dtype=torch.float64)
    first = method.coefficients(random_gram(2, 1.0, 0), ones, epoch=1).values
    second = method.coefficients(random_gram(2, 1.0, 1), ones, epoch=1).values
    third = method.coefficients(random_gram(2, 1.0, 1), ones, epoch=1).values
    torch.testing.assert_close(first, second)
    assert not torch.allclose(second, third)


def test_the_solver_is_an_option():
    assert build_gradient_method("nash_mtl").solver == "newton"
    assert build_gradient_method("nash_mtl", solver="ccp").solver == "ccp"
    with pytest.raises(ValueError, match="solver"):
        NashMTL(solver="cvx")  # type: ignore[arg-type]


def test_both_solvers_give_the_same_coefficients_on_a_well_scaled_gram():
    gram = random_gram(2, 1.0, 2)
    weights = torch.tensor([1.0, 0.5], dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ccp = NashMTL(solver="ccp").coefficients(gram, weights, epoch=1).values
    newton = NashMTL(solver="newton").coefficients(gram, weights, epoch=1).values
    torch.testing.assert_close(newton, ccp, rtol=1e-4, atol=0)
