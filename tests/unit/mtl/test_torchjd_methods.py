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
    assert torch.allclose(combination.vector, expected, rtol=1e-5, atol=1e-6)
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
