"""Per-task gradients, writing ``.grad``, diagnostics and the registry, on small real networks."""

import pytest
import torch
from toy_multitask import TASKS, ToyMultitask, toy_losses

from thyroid_monai.mtl import (
    GRADIENT_METHODS,
    CameGrad,
    WeightedSum,
    build_gradient_method,
    gradient_diagnostics,
    task_gradients,
)


def reference_gradient(model, loss):
    model.zero_grad()
    loss.backward(retain_graph=True)
    grads = {
        name: torch.zeros_like(p) if p.grad is None else p.grad.clone()
        for name, p in model.named_parameters()
    }
    model.zero_grad()
    return grads


def test_task_gradients_match_separate_backward_passes():
    model = ToyMultitask()
    _, losses = toy_losses(model)
    expected = {task: reference_gradient(model, loss) for task, loss in losses.items()}
    shared = model.shared_parameters()
    heads = [p for ps in model.task_parameters().values() for p in ps]
    gradients = task_gradients(losses, shared, other_params=heads, weights={"cls": 2.0})
    assert gradients.tasks == TASKS
    assert gradients.matrix.shape == (4, sum(p.numel() for p in shared))
    for row, task in enumerate(TASKS):
        flat = torch.cat([expected[task][f"trunk.{n}"].reshape(-1) for n, _ in
                          model.trunk.named_parameters()])  # fmt: skip
        assert torch.allclose(gradients.matrix[row], flat)
    head = model.heads["cls"].weight
    assert torch.allclose(gradients.rest[head], 2.0 * expected["cls"]["heads.cls.weight"])
    assert all(p.grad is None for p in model.parameters())  # nothing written yet


def test_task_gradients_reject_bad_losses():
    model = ToyMultitask()
    with pytest.raises(ValueError, match="no task losses"):
        task_gradients({}, model.shared_parameters())
    with pytest.raises(ValueError, match="'seg' must be a scalar"):
        task_gradients({"seg": torch.ones(3, requires_grad=True)}, model.shared_parameters())


@pytest.mark.parametrize("parameters", ["shared", "all"])
@pytest.mark.parametrize("declare_heads", [True, False])
def test_measured_sum_writes_the_same_gradient_as_one_backward(parameters, declare_heads):
    model = ToyMultitask()
    weights = {"seg": 0.5, "rad": 3.0}
    _, losses = toy_losses(model)
    WeightedSum(weights).backward(losses, shared_params=model.shared_parameters())
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)

    _, losses = toy_losses(model)
    method = WeightedSum(weights, measure_conflict=True, parameters=parameters)
    diagnostics = method.backward(
        losses,
        shared_params=model.shared_parameters(),
        task_params=model.task_parameters() if declare_heads else None,
    )
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, e, atol=1e-6)
    assert diagnostics["weight_seg"] == 0.5
    assert diagnostics["combined_to_joint_norm"] == pytest.approx(1.0)
    assert {f"grad_cos_{a}_{b}" for a, b in [("seg", "cls"), ("rad", "margin")]} <= set(diagnostics)
    assert 0.0 <= diagnostics["conflict"] <= 1.0


def test_all_parameters_aggregate_the_heads_too():
    model = ToyMultitask(tasks=("seg", "cls"))
    _, losses = toy_losses(model, tasks=("seg", "cls"))
    # kappa = nu = 1 leaves the joint gradient, but rho changes nothing else: heads are scaled by
    # CAME-Grad's coefficients only when they are aggregated.
    method = CameGrad(nu=0.0, parameters="all")
    method.backward(losses, shared_params=model.shared_parameters(),
                    task_params=model.task_parameters())  # fmt: skip
    all_heads = model.heads["cls"].weight.grad.clone()
    model.zero_grad(set_to_none=True)
    _, losses = toy_losses(model, tasks=("seg", "cls"))
    CameGrad(nu=0.0, parameters="shared").backward(
        losses, shared_params=model.shared_parameters(), task_params=model.task_parameters()
    )
    shared_only = model.heads["cls"].weight.grad
    assert torch.allclose(all_heads / all_heads.norm(), shared_only / shared_only.norm())
    assert not torch.allclose(all_heads, shared_only)


def test_gradient_diagnostics_from_a_known_gram_matrix():
    grads = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0]])
    diagnostics = gradient_diagnostics(grads @ grads.T, ["a", "b", "c"])
    assert diagnostics["grad_norm_b"] == pytest.approx(2.0)
    assert diagnostics["grad_cos_a_b"] == pytest.approx(0.0)
    assert diagnostics["grad_cos_a_c"] == pytest.approx(-1.0)
    assert diagnostics["grad_cos_min"] == pytest.approx(-1.0)
    assert diagnostics["conflict"] == 1.0
    zero = gradient_diagnostics(torch.zeros(2, 2), ["a", "b"])
    assert zero["grad_cos_a_b"] == 0.0
    assert zero["conflict"] == 0.0
    with pytest.raises(ValueError, match="3 tasks"):
        gradient_diagnostics(torch.zeros(2, 2), ["a", "b", "c"])


def test_registry_lists_every_method_and_rejects_unknown_names():
    assert {"sum", "uncertainty", "gradnorm", "camegrad", "pcgrad", "cagrad", "mgda", "nash_mtl",
            "imtl_g", "aligned_mtl", "upgrad"} <= set(GRADIENT_METHODS)  # fmt: skip
    with pytest.raises(KeyError, match=r"unknown gradient method 'magic'; registered: .*camegrad"):
        build_gradient_method("magic")
    for name, method in GRADIENT_METHODS.items():
        assert method.name == name


def rlar_like_penalty(latent, losses):
    """A representation-level penalty built by double back-propagation, as RLAR does."""
    directions = []
    for task in ("seg", "cls"):
        (grad,) = torch.autograd.grad(losses[task], latent, create_graph=True)
        directions.append(grad.flatten(1) / (grad.flatten(1).norm(dim=1, keepdim=True) + 1e-8))
    cosine = (directions[0] * directions[1]).sum(dim=1)
    return torch.relu(cosine - 0.1).pow(2).mean()


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_every_method_handles_many_tasks_and_losses_carrying_extra_terms(name):
    model = ToyMultitask()
    method = build_gradient_method(name, task_weights={task: 1.0 for task in TASKS})
    latent, losses = toy_losses(model)
    penalty = rlar_like_penalty(latent, losses)
    losses = {task: loss + 0.05 * penalty for task, loss in losses.items()}
    diagnostics = method.backward(
        losses,
        shared_params=model.shared_parameters(),
        task_params=model.task_parameters(),
        latent=latent,
        epoch=1,
    )
    for p in [*model.parameters(), *method.extra_parameters()]:
        assert p.grad is not None
        assert torch.isfinite(p.grad).all()
    assert all(isinstance(v, float) for v in diagnostics.values())
    assert {f"weight_{task}" for task in TASKS} <= set(diagnostics)


def test_regularised_losses_reach_the_parameters_through_every_backward_pass():
    # CAME-Grad with kappa = nu = 1 is the joint gradient, so it must equal one backward pass of
    # the regularised joint objective, second-order terms of the penalty included.
    model = ToyMultitask(tasks=("seg", "cls"))
    latent, losses = toy_losses(model, tasks=("seg", "cls"))
    penalty = rlar_like_penalty(latent, losses)
    (losses["seg"] + losses["cls"] + 0.1 * penalty).backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    latent, losses = toy_losses(model, tasks=("seg", "cls"))
    penalty = rlar_like_penalty(latent, losses)
    losses = {task: loss + 0.05 * penalty for task, loss in losses.items()}
    CameGrad(kappa=1.0, nu=1.0).backward(
        losses, shared_params=model.shared_parameters(), task_params=model.task_parameters()
    )
    for p, e in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(p.grad, e, atol=1e-6)


def test_non_finite_gradients_are_refused_with_the_task_named():
    model = ToyMultitask(tasks=("seg", "cls"))
    _, losses = toy_losses(model, tasks=("seg", "cls"))
    losses["cls"] = losses["cls"] * torch.tensor(float("inf"))
    with pytest.raises(FloatingPointError, match=r"task\(s\) \['cls'\]"):
        CameGrad().backward(losses, shared_params=model.shared_parameters(),
                            task_params=model.task_parameters())  # fmt: skip
    assert all(p.grad is None for p in model.shared_parameters())
