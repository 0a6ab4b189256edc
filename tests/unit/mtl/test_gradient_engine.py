"""The per-task-gradient engine, every method through it, and aggregation at the representation.

The references are the implementation before the engine (issue 17), kept here: one
``autograd.grad`` per task flattened into a ``[tasks, params]`` matrix, and each method's
combination of that matrix (the torchjd aggregator applied to the weighted rows, CAME-Grad's
pure direction, the weighting formulas).
"""

import copy

import pytest
import torch
from torchjd import aggregation
from toy_multitask import TASKS, ToyMultitask, toy_losses

from thyroid_monai.mtl import (
    GRADIENT_METHODS,
    build_gradient_method,
    came_grad_direction,
    representation_cut,
    task_gradients,
)
from thyroid_monai.mtl.gradients import PhaseTimer

WEIGHTS = {"seg": 1.0, "cls": 2.0, "rad": 0.5, "margin": 1.5}


def old_task_matrix(losses, params):
    """The matrix as the code before the engine built it: one autograd.grad per task, flattened."""
    rows = []
    for loss in losses.values():
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        rows.append(
            torch.cat(
                [
                    torch.zeros(p.numel()) if g is None else g.reshape(-1)
                    for p, g in zip(params, grads, strict=True)
                ]
            )
        )
    return torch.stack(rows)


def old_direction(name, method, matrix, weights):
    """Each method's combination of the matrix as implemented before the engine."""
    w = torch.tensor([weights[t] for t in TASKS])
    if name == "sum":
        return w @ matrix
    if name == "uncertainty":
        return (torch.exp(-method.log_variance.detach()) * w) @ matrix
    if name == "gradnorm":  # first step: the logits are zero, the weights one
        return torch.ones(len(TASKS)) @ matrix
    if name == "camegrad":
        return came_grad_direction(matrix, w, rho=method.rho, kappa=method.kappa, nu=method.nu)
    weighted = w[:, None] * matrix
    reference = {
        "pcgrad": lambda: aggregation.PCGrad(),
        "cagrad": lambda: aggregation.CAGrad(c=method.c, norm_eps=method.norm_eps),
        "mgda": lambda: aggregation.MGDA(),
        "nash_mtl": lambda: aggregation.NashMTL(n_tasks=len(TASKS)),
        "imtl_g": lambda: aggregation.IMTLG(),
        "aligned_mtl": lambda: aggregation.AlignedMTL(),
        "upgrad": lambda: aggregation.UPGrad(),
    }[name]()
    if name == "cagrad":  # the rows handed over divided by their Frobenius norm
        return reference.weighting(weighted / weighted.norm()).to(matrix.dtype) @ weighted
    return reference(weighted)


def flat_grads(params):
    return torch.cat(
        [torch.zeros(p.numel()) if p.grad is None else p.grad.reshape(-1) for p in params]
    )


@pytest.mark.parametrize("batched", [False, True])
def test_engine_task_gradients_equal_separate_autograd_calls(batched):
    model = ToyMultitask()
    _, losses = toy_losses(model)
    shared = model.shared_parameters()
    heads = [p for ps in model.task_parameters().values() for p in ps]
    expected = {
        task: torch.autograd.grad(loss, [*shared, *heads], retain_graph=True, allow_unused=True)
        for task, loss in losses.items()
    }
    matrix = old_task_matrix(losses, shared)
    gradients = task_gradients(losses, shared, other_params=heads, weights=WEIGHTS, batched=batched)
    for row, task in enumerate(TASKS):
        for got, want in zip(gradients.rows[row], expected[task][: len(shared)], strict=True):
            if batched:  # a vmapped backward may sum in another order
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
            else:
                assert torch.equal(got, want)
    for index, head in enumerate(heads, start=len(shared)):
        joint = sum(
            WEIGHTS[t] * expected[t][index] for t in TASKS if expected[t][index] is not None
        )
        torch.testing.assert_close(gradients.rest[head], joint, rtol=1e-6, atol=1e-7)
    if not batched:
        assert torch.equal(gradients.matrix, matrix)
    torch.testing.assert_close(gradients.gram(), matrix @ matrix.T, rtol=1e-5, atol=1e-7)
    coefficients = torch.tensor([0.3, -1.0, 2.0, 0.5])
    combined = torch.cat([piece.reshape(-1) for piece in gradients.combine(coefficients)])
    torch.testing.assert_close(combined, coefficients @ matrix, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_every_method_writes_the_update_it_wrote_before_the_engine(name):
    options = {"measure_conflict": True} if name in ("sum", "uncertainty") else {}
    if name in ("camegrad",):
        options["parameters"] = "shared"
    method = build_gradient_method(name, task_weights=WEIGHTS, **options)
    model = ToyMultitask()
    _, losses = toy_losses(model)
    shared = model.shared_parameters()
    heads = [p for ps in model.task_parameters().values() for p in ps]
    matrix = old_task_matrix(losses, shared)
    torch.manual_seed(0)  # PCGrad draws projection orders
    expected_shared = old_direction(name, copy.deepcopy(method), matrix, WEIGHTS)
    head_weights = method.head_weights(TASKS)
    joint = sum(head_weights[t] * losses[t] for t in TASKS)
    expected_heads = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(joint, heads, retain_graph=True)]
    )
    torch.manual_seed(0)
    method.backward(losses, shared_params=shared, task_params=model.task_parameters())
    torch.testing.assert_close(flat_grads(shared), expected_shared, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(flat_grads(heads), expected_heads, rtol=1e-5, atol=1e-7)


def cut_losses(model, seed=0):
    """Toy losses computed with the graph cut at the trunk's output."""
    with representation_cut(model.trunk) as cut:
        _, losses = toy_losses(model, seed=seed)
    return losses, cut.get()


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_every_aggregator_works_at_the_representation(name):
    options = {"measure_conflict": True} if name in ("sum", "uncertainty") else {}
    if name == "camegrad":  # the reference aggregates the latent gradients alone
        options["parameters"] = "shared"
    method = build_gradient_method(
        name, task_weights=WEIGHTS, aggregate_at="representation", **options
    )
    assert method.needs_representation
    model = ToyMultitask()
    reference_method = copy.deepcopy(method)
    # Reference: per-task gradients at the (uncut) latent, the method's combination of that
    # matrix, carried through the trunk; the heads get the joint objective's gradient.
    latent, losses = toy_losses(model)
    rows = [torch.autograd.grad(loss, latent, retain_graph=True)[0] for loss in losses.values()]
    matrix = torch.stack([r.reshape(-1) for r in rows])
    if name == "gradnorm":
        reference_method._losses = torch.stack([losses[t].detach() for t in TASKS])
        reference_method.initial_losses = reference_method._losses.clone()
    w = torch.tensor([WEIGHTS[t] for t in TASKS])
    torch.manual_seed(0)
    direction = reference_method.combine(matrix, w, epoch=1).vector
    expected_trunk = torch.autograd.grad(
        latent, model.shared_parameters(), grad_outputs=direction.view_as(latent),
        retain_graph=True,
    )  # fmt: skip
    head_weights = reference_method.head_weights(TASKS)
    heads = [p for ps in model.task_parameters().values() for p in ps]
    joint = sum(head_weights[t] * losses[t] for t in TASKS)
    expected_heads = torch.autograd.grad(joint, heads)

    losses, representation = cut_losses(model)
    torch.manual_seed(0)
    diagnostics = method.backward(
        losses,
        shared_params=model.shared_parameters(),
        task_params=model.task_parameters(),
        representation=representation,
    )
    for p, g in zip(model.shared_parameters(), expected_trunk, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
    for p, g in zip(heads, expected_heads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-7)
    assert representation.leaves[0].grad is None  # the leaves are not written, only carried
    assert "grad_cos_min" in diagnostics


def test_measured_sum_at_the_representation_is_the_plain_gradient():
    # J^T (sum_t w_t dL_t/dz) = sum_t w_t J^T dL_t/dz: for a fixed combination the two levels agree
    model = ToyMultitask()
    _, losses = toy_losses(model)
    sum(WEIGHTS[t] * losses[t] for t in TASKS).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses, representation = cut_losses(model)
    method = build_gradient_method(
        "sum", task_weights=WEIGHTS, measure_conflict=True, aggregate_at="representation"
    )
    method.backward(
        losses,
        shared_params=model.shared_parameters(),
        task_params=model.task_parameters(),
        representation=representation,
    )
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-5, atol=1e-7)


def test_representation_level_needs_the_cut():
    model = ToyMultitask()
    _, losses = toy_losses(model)
    method = build_gradient_method("camegrad", aggregate_at="representation")
    with pytest.raises(ValueError, match="needs the graph cut"):
        method.backward(losses, shared_params=model.shared_parameters())
    with pytest.raises(ValueError, match="aggregate_at must be one of"):
        build_gradient_method("upgrad", aggregate_at="latent")


def test_the_cut_without_a_forward_pass_is_an_error():
    with representation_cut(torch.nn.Linear(2, 2)) as cut:
        pass
    with pytest.raises(RuntimeError, match="saw no forward pass"):
        cut.get()


def test_the_phase_timer_sees_every_phase_of_an_aggregator():
    model = ToyMultitask()
    _, losses = toy_losses(model)
    method = build_gradient_method("camegrad")
    method.timer = PhaseTimer()
    method.backward(
        losses, shared_params=model.shared_parameters(), task_params=model.task_parameters()
    )
    assert set(method.timer.seconds) == {"task_gradients", "aggregation", "write", "diagnostics"}
    # parameters "all": every task's trunk gradient, and each head's gradient for its own task
    shared = sum(p.numel() for p in model.shared_parameters())
    heads = sum(p.numel() for ps in model.task_parameters().values() for p in ps)
    assert method.timer.task_gradient_bytes == [4 * (len(TASKS) * shared + heads)]
