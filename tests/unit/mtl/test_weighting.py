"""Uncertainty weighting and GradNorm: updates, learned parameters, checkpoint state."""

import math

import pytest
import torch
from toy_multitask import ToyMultitask, toy_losses

from thyroid_monai.mtl import GradNorm, UncertaintyWeighting

TWO = ("seg", "cls")


def run_backward(method, model, seed=0):
    _, losses = toy_losses(model, tasks=TWO, seed=seed)
    return losses, method.backward(
        losses, shared_params=model.shared_parameters(), task_params=model.task_parameters()
    )


def test_uncertainty_weighting_gradients_with_and_without_measuring_agree():
    cheap, measured = UncertaintyWeighting(TWO), UncertaintyWeighting(TWO, measure_conflict=True)
    for method in (cheap, measured):
        with torch.no_grad():
            method.log_variance.copy_(torch.tensor([0.5, -1.0]))
    model = ToyMultitask(tasks=TWO)
    losses, diagnostics = run_backward(cheap, model)
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    _, measured_diagnostics = run_backward(measured, model)
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, e, atol=1e-6)
    assert torch.allclose(measured.log_variance.grad, cheap.log_variance.grad)
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    value = float(losses["seg"].detach())
    assert float(cheap.log_variance.grad[0]) == pytest.approx(1 - math.exp(-0.5) * value, rel=1e-5)
    assert diagnostics["weight_cls"] == pytest.approx(math.exp(1.0))
    assert "grad_cos_seg_cls" in measured_diagnostics


def test_uncertainty_weighting_learns_through_the_optimiser_and_checkpoints():
    method = UncertaintyWeighting(task_weights={"seg": 1.0, "cls": 1.0})
    model = ToyMultitask(tasks=TWO)
    optimiser = torch.optim.SGD([*model.parameters(), *method.extra_parameters()], lr=0.1)
    for seed in range(3):
        optimiser.zero_grad()
        run_backward(method, model, seed)
        optimiser.step()
    assert not torch.equal(method.log_variance.detach(), torch.zeros(2))
    state = method.state_dict()
    restored = UncertaintyWeighting(TWO)
    parameter = restored.log_variance
    restored.load_state_dict(state)
    assert restored.log_variance is parameter  # the optimiser's reference stays valid
    assert torch.equal(restored.log_variance.detach(), method.log_variance.detach())
    with pytest.raises(KeyError, match="log_variance"):
        restored.load_state_dict({})


def test_weighting_methods_need_their_task_names():
    with pytest.raises(ValueError, match="name the tasks"):
        UncertaintyWeighting()
    method = GradNorm(TWO)
    model = ToyMultitask(tasks=("seg", "rad"))
    _, losses = toy_losses(model, tasks=("seg", "rad"))
    with pytest.raises(ValueError, match=r"built for tasks \('seg', 'cls'\)"):
        method.backward(losses, shared_params=model.shared_parameters())


def test_gradnorm_raises_the_weight_of_the_task_with_the_smaller_gradient():
    method = GradNorm(TWO, alpha=0.0)
    grads = torch.tensor([[10.0, 0.0], [0.0, 1.0]])
    method._losses = method.initial_losses = torch.ones(2)
    combination = method.combine(grads, torch.ones(2), epoch=1)
    assert torch.allclose(combination.vector, torch.tensor([10.0, 1.0]))  # equal weights at first
    assert method.logits.grad[1] < 0 < method.logits.grad[0]  # descent raises the weight of cls
    optimiser = torch.optim.SGD(method.extra_parameters(), lr=0.1)
    optimiser.step()
    weights = method.loss_weights()
    assert float(weights.sum()) == pytest.approx(2.0)
    assert weights[1] > 1.0 > weights[0]


def test_gradnorm_restoring_force_favours_the_slower_task():
    method = GradNorm(TWO, alpha=1.5)
    grads = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    method.initial_losses = torch.ones(2)
    method._losses = torch.tensor([0.2, 0.9])  # cls trains slower
    method.combine(grads, torch.ones(2), epoch=1)
    assert method.logits.grad[1] < 0 < method.logits.grad[0]


def test_gradnorm_trains_and_keeps_its_reference_losses_in_the_checkpoint():
    method = GradNorm(task_weights={"seg": 1.0, "cls": 1.0})
    model = ToyMultitask(tasks=TWO)
    optimiser = torch.optim.Adam([*model.parameters(), *method.extra_parameters()], lr=0.05)
    first, _ = run_backward(method, model)
    optimiser.step()
    for seed in (1, 2):
        optimiser.zero_grad()
        _, diagnostics = run_backward(method, model, seed)
        optimiser.step()
    assert torch.allclose(method.initial_losses, torch.stack([first["seg"], first["cls"]]))
    assert diagnostics["weight_seg"] + diagnostics["weight_cls"] == pytest.approx(2.0)
    assert diagnostics["weight_seg"] != pytest.approx(1.0)
    restored = GradNorm(TWO)
    restored.load_state_dict(method.state_dict())
    assert torch.equal(restored.initial_losses, method.initial_losses)
    assert torch.equal(restored.logits.detach(), method.logits.detach())


def test_learned_weights_resume_through_an_ignite_checkpoint(tmp_path):
    from ignite.handlers import Checkpoint

    trained = GradNorm(TWO)
    model = ToyMultitask(tasks=TWO)
    run_backward(trained, model)
    with torch.no_grad():
        trained.logits.add_(torch.tensor([0.3, -0.3]))
    torch.save({"gradient_method": trained.state_dict()}, tmp_path / "checkpoint.pt")
    resumed = GradNorm(TWO)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    Checkpoint.load_objects({"gradient_method": resumed}, saved)
    assert torch.equal(resumed.logits.detach(), trained.logits.detach())
    assert torch.equal(resumed.initial_losses, trained.initial_losses)
