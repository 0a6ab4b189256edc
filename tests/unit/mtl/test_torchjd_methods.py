"""The torchjd adapters: the aggregation is torchjd's, the error for a missing extra is ours."""

import importlib.util

import pytest
import torch
from torchjd import aggregation

from thyroid_monai.mtl import (
    IMTLG,
    MGDA,
    AlignedMTL,
    CAGrad,
    NashMTL,
    PCGrad,
    UPGrad,
    build_gradient_method,
)

ADAPTERS = [
    (PCGrad(), aggregation.PCGrad()),
    (CAGrad(c=0.4), aggregation.CAGrad(c=0.4)),
    (MGDA(), aggregation.MGDA()),
    (IMTLG(), aggregation.IMTLG()),
    (AlignedMTL(scale_mode="median"), aggregation.AlignedMTL(scale_mode="median")),
    (UPGrad(), aggregation.UPGrad()),
    (NashMTL(), aggregation.NashMTL(n_tasks=3)),
]


@pytest.mark.parametrize(("method", "reference"), ADAPTERS, ids=lambda m: type(m).__name__)
def test_combination_is_the_torchjd_aggregation_of_the_weighted_rows(method, reference):
    generator = torch.Generator().manual_seed(3)
    grads = torch.randn(3, 40, generator=generator)
    grads[2] = -grads[0] + 0.2 * grads[2]
    weights = torch.tensor([1.0, 2.0, 0.5])
    torch.manual_seed(0)  # PCGrad draws random projection orders
    combination = method.combine(grads, weights, epoch=1)
    torch.manual_seed(0)
    expected = reference(weights[:, None] * grads)
    # CAGrad hands torchjd the rows divided by their norm (a relative norm_eps); its
    # interior-point solver then stops at a slightly different point of the same optimum.
    tolerance = 1e-3 if isinstance(method, CAGrad) else 1e-5
    assert torch.allclose(combination.vector, expected, rtol=tolerance, atol=tolerance / 10)
    assert torch.allclose(combination.coefficients @ grads, combination.vector, atol=1e-5)


def test_missing_solver_names_the_extra(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def without_cvxpy(name, *args):
        return None if name == "cvxpy" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_cvxpy)
    with pytest.raises(ImportError, match=r"CAGrad needs cvxpy.*'mtl' extra.*thyroid-monai\[mtl\]"):
        build_gradient_method("cagrad")
    assert isinstance(build_gradient_method("pcgrad"), PCGrad)  # needs torchjd only


def test_arguments_are_validated_and_logged():
    with pytest.raises(ValueError, match="non-negative"):
        CAGrad(c=-1.0)
    with pytest.raises(ValueError, match="scale_mode"):
        AlignedMTL(scale_mode="max")
    assert repr(CAGrad(c=0.4)) == "CAGrad(parameters='shared', c=0.4, norm_eps=0.0001)"


def test_aggregator_follows_the_number_of_tasks():
    method = NashMTL()
    assert method.aggregator(2) is method.aggregator(2)
    assert method.aggregator(3).weighting.n_tasks == 3


def test_cagrad_step_does_not_depend_on_the_scale_of_the_gradients():
    generator = torch.Generator().manual_seed(5)
    grads = torch.randn(2, 30, generator=generator, dtype=torch.float64)
    grads[1] = -0.5 * grads[0] + 0.3 * grads[1]  # conflicting tasks
    weights = torch.ones(2, dtype=torch.float64)
    method = CAGrad(c=0.5)
    reference = method.combine(grads, weights, epoch=1).vector
    for scale in (1e-6, 1e-3, 1e3):
        scaled = method.combine(scale * grads, weights, epoch=1).vector
        assert torch.allclose(scaled, scale * reference, rtol=1e-5, atol=0.0)


def test_cagrad_moves_the_encoder_when_the_task_gradients_are_small_but_valid():
    # Task-gradient norms of about 0.005 and 0.003 (late in training): summed squared norms fall
    # under torchjd's absolute norm_eps (1e-4), which on its own would make the step exactly zero.
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from toy_multitask import ToyMultitask, toy_losses

    model = ToyMultitask(tasks=("seg", "cls"))
    _, losses = toy_losses(model, tasks=("seg", "cls"))
    shared = model.shared_parameters()
    norms = [
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared, retain_graph=True)])
        .norm()
        .item()
        for loss in losses.values()
    ]
    losses = {
        task: loss * target / norm
        for (task, loss), target, norm in zip(losses.items(), (0.005, 0.003), norms, strict=True)
    }
    CAGrad(c=0.5).backward(
        losses, shared_params=shared, task_params=model.task_parameters(), epoch=1
    )
    step = torch.cat([p.grad.flatten() for p in shared])
    assert 1e-4 < float(step.norm()) < 0.01
