"""The per-task-gradient engine: where every gradient method takes its task gradients.

One backward pass per task (``torch.autograd.grad`` with the graph kept between tasks), or one
batched backward over all tasks (``is_grads_batched=True``, a vmap over the backward graph) when
asked for. On the CPU the batched backward was measured slower than the per-task passes (1.05x
and 1.35x of them, resnet18, ``benchmarks/step_cost.py``: ``floor_batched``), so the per-task
passes are the default.

The gradients stay as autograd returns them, one tensor per task and aggregated tensor
(:class:`TaskGradients`): the Gram matrix ``G G^T`` and a combination ``c @ G`` are computed from
those pieces, so no ``[tasks, params]`` copy is made unless an aggregator needs the whole matrix
(:attr:`TaskGradients.matrix`). The task-owned parameters (heads, decoder) are differentiated in
the same passes and receive the joint objective's gradient.

Representation level (LibMTL's ``rep_grad``, MGDA-UB): :func:`representation_cut` cuts the graph
at the outputs of the shared encoder during the forward pass. The heads then read detached copies
(leaves) of the encoder maps, so the task gradients with respect to those maps cost backward
passes through the heads only; the aggregated map gradient goes through the encoder once
(:meth:`Representation.backward`).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import torch

Rows = tuple[tuple[torch.Tensor | None, ...], ...]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or the parameters' own type when it is wider: half-precision sums lose conflicts."""
    return torch.promote_types(dtype, torch.float32)


def plain_losses(losses: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The losses as plain tensors, still in the graph.

    Losses computed from MONAI ``MetaTensor`` batches are MetaTensors, and so would be their
    gradients, whose batch metadata breaks flattening and slicing.
    """
    return {task: loss.as_subclass(torch.Tensor) for task, loss in losses.items()}


@dataclass(frozen=True)
class TaskGradients:
    """Per-task gradients of one step.

    Attributes:
        tasks: Task names, in row order.
        rows: ``rows[t][k]``: gradient of task ``t``'s unweighted loss with respect to
            ``params[k]``, shaped like it (None where the task does not reach it: zeros).
        params: The aggregated tensors (parameters, or representation maps), in column order.
        rest: Gradient of the joint objective for every other parameter the tasks reach.
    """

    tasks: tuple[str, ...]
    rows: Rows
    params: tuple[torch.Tensor, ...]
    rest: dict[torch.Tensor, torch.Tensor]

    @property
    def dtype(self) -> torch.dtype:
        """The type the Gram matrix and the combinations are accumulated in."""
        return accumulation_dtype(self.params[0].dtype)

    @cached_property
    def matrix(self) -> torch.Tensor:
        """The ``[tasks, params]`` matrix, flattened in column order (a copy; zeros where None)."""
        sizes = [p.numel() for p in self.params]
        matrix = torch.zeros(
            len(self.tasks), sum(sizes), dtype=self.dtype, device=self.params[0].device
        )
        for row, grads in zip(matrix, self.rows, strict=True):
            for piece, g in zip(row.split(sizes), grads, strict=True):
                if g is not None:
                    piece.copy_(g.reshape(-1))
        return matrix

    def gram(self) -> torch.Tensor:
        """``G G^T`` from the pieces: one dot product per pair of tasks and column."""
        count = len(self.tasks)
        gram = torch.zeros(count, count, dtype=torch.float64, device=self.params[0].device)
        for column in range(len(self.params)):
            pieces = [self._flat(task, column) for task in range(count)]
            for a, piece_a in enumerate(pieces):
                for b in range(a, count):
                    piece_b = pieces[b]
                    if piece_a is not None and piece_b is not None:
                        gram[a, b] += torch.dot(piece_a, piece_b).to(torch.float64)
        upper = torch.triu(gram, diagonal=1)
        return (gram + upper.T).to(self.dtype)

    def combine(
        self,
        coefficients: torch.Tensor,
        into: Sequence[torch.Tensor | None] | None = None,
    ) -> list[torch.Tensor]:
        """``coefficients @ G``, one tensor per column, shaped like it.

        Args:
            coefficients: One per task.
            into: Per column, a tensor of the column's shape and the accumulation type to add
                the combination to in place (an existing ``.grad``), or None (a new tensor).
        """
        values = [float(c) for c in coefficients.tolist()]
        targets = list(into) if into is not None else [None] * len(self.params)
        combined = []
        for column, (p, total) in enumerate(zip(self.params, targets, strict=True)):
            for task, c in enumerate(values):
                g = self.rows[task][column]
                if g is None:
                    continue
                g = g.to(self.dtype)
                total = g * c if total is None else total.add_(g, alpha=c)
            combined.append(torch.zeros_like(p, dtype=self.dtype) if total is None else total)
        return combined

    def split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """A flat vector over the columns as one tensor per column (views)."""
        sizes = [p.numel() for p in self.params]
        if sum(sizes) != vector.numel():
            raise ValueError(f"gradient vector has {vector.numel()} entries, columns {sum(sizes)}")
        return [piece.view_as(p) for p, piece in zip(self.params, vector.split(sizes), strict=True)]

    def nbytes(self) -> int:
        """Memory the per-task gradients of the aggregated tensors hold."""
        return sum(g.numel() * g.element_size() for row in self.rows for g in row if g is not None)

    def _flat(self, task: int, column: int) -> torch.Tensor | None:
        g = self.rows[task][column]
        return None if g is None else g.reshape(-1).to(self.dtype)


def _check_inputs(losses: Mapping[str, torch.Tensor], params: Sequence[torch.Tensor]) -> None:
    if not losses:
        raise ValueError("no task losses to differentiate")
    if not params:
        raise ValueError("no parameters to differentiate the task losses by")
    for task, loss in losses.items():
        if loss.dim() != 0:
            raise ValueError(
                f"loss of task {task!r} must be a scalar, got shape {tuple(loss.shape)}"
            )


def task_gradients(
    losses: Mapping[str, torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    other_params: Sequence[torch.Tensor] = (),
    weights: Mapping[str, float] | None = None,
    batched: bool = False,
) -> TaskGradients:
    """Computes each task's gradient without writing ``.grad``.

    Args:
        losses: Scalar loss per task (attached to one graph).
        params: Tensors whose per-task gradients are aggregated (parameters or representation
            maps that require a gradient).
        other_params: Further parameters (task heads): they receive the gradient of the joint
            objective ``sum_t w_t L_t``, accumulated from the same backward passes.
        weights: Task weights of the joint objective (1 when absent).
        batched: One batched backward over the tasks instead of one backward per task.

    Returns:
        The per-task gradients; a tensor a task does not reach has a None entry (zeros).

    Raises:
        ValueError: Without losses or parameters, or for a loss that is not a scalar.
    """
    _check_inputs(losses, params)
    losses = plain_losses(losses)
    tasks = tuple(losses)
    task_weights = [1.0 if weights is None else float(weights.get(t, 1.0)) for t in tasks]
    inputs = [*params, *other_params]
    if batched:
        per_task = _batched_grads([losses[t] for t in tasks], inputs)
    else:
        per_task = [
            torch.autograd.grad(
                losses[task], inputs, retain_graph=index < len(tasks) - 1, allow_unused=True
            )
            for index, task in enumerate(tasks)
        ]
    rows = tuple(tuple(grads[: len(params)]) for grads in per_task)
    rest: dict[torch.Tensor, torch.Tensor] = {}
    for index, p in enumerate(other_params, start=len(params)):
        for weight, grads in zip(task_weights, per_task, strict=True):
            g = grads[index]
            if g is not None:
                rest[p] = weight * g if p not in rest else rest[p].add_(g, alpha=weight)
    return TaskGradients(tasks, rows, tuple(params), rest)


def _batched_grads(
    losses: list[torch.Tensor], inputs: list[torch.Tensor]
) -> list[tuple[torch.Tensor | None, ...]]:
    """All tasks' gradients in one vmapped backward; per task, views of the batched results."""
    stacked = torch.stack(losses)
    identity = torch.eye(len(losses), dtype=stacked.dtype, device=stacked.device)
    grads = torch.autograd.grad(
        stacked, inputs, grad_outputs=identity, is_grads_batched=True, allow_unused=True
    )
    return [tuple(None if g is None else g[t] for g in grads) for t in range(len(losses))]


@dataclass
class Representation:
    """The graph cut at the shared encoder's outputs during one forward pass.

    Attributes:
        outputs: The encoder's own outputs that require a gradient (attached to the encoder).
        leaves: Their detached copies, which the rest of the network read (same order).
        params: The encoder's parameters: reached only through ``outputs``.
    """

    outputs: tuple[torch.Tensor, ...]
    leaves: tuple[torch.Tensor, ...]
    params: tuple[torch.Tensor, ...]

    def backward(self, grads: Mapping[torch.Tensor, torch.Tensor]) -> None:
        """Back-propagates gradients of the leaves through the encoder (accumulates ``.grad``)."""
        pairs = [
            (output, grads[leaf])
            for output, leaf in zip(self.outputs, self.leaves, strict=True)
            if leaf in grads
        ]
        if pairs:
            outputs, tensors = zip(*pairs, strict=True)
            torch.autograd.backward(list(outputs), list(tensors))


@dataclass
class RepresentationCut:
    """Receives the :class:`Representation` of a forward pass inside :func:`representation_cut`."""

    module: torch.nn.Module
    representation: Representation | None = None

    def get(self) -> Representation:
        """The cut of the forward pass.

        Raises:
            RuntimeError: If the module did not run inside the context.
        """
        if self.representation is None:
            raise RuntimeError(
                f"the representation cut at {type(self.module).__name__} saw no forward pass"
            )
        return self.representation


def _leaf(tensor: Any) -> Any:
    if isinstance(tensor, torch.Tensor) and tensor.requires_grad:
        return tensor.detach().requires_grad_()
    return tensor


@contextlib.contextmanager
def representation_cut(module: torch.nn.Module) -> Iterator[RepresentationCut]:
    """Cuts the graph at ``module``'s outputs (a tensor or a list/tuple of tensors) while open.

    The module's outputs are replaced by detached leaves, so what reads them is differentiated
    with respect to the leaves, and ``Representation.backward`` carries a leaf gradient through
    the module. Each forward pass of the module inside the context replaces the recorded cut.
    """
    cut = RepresentationCut(module)

    def hook(_: torch.nn.Module, __: Any, output: Any) -> Any:
        outputs = list(output) if isinstance(output, list | tuple) else [output]
        leaves = [_leaf(o) for o in outputs]
        cut_pairs = [(o, leaf) for o, leaf in zip(outputs, leaves, strict=True) if leaf is not o]
        cut.representation = Representation(
            outputs=tuple(o for o, _ in cut_pairs),
            leaves=tuple(leaf for _, leaf in cut_pairs),
            params=tuple(p for p in module.parameters() if p.requires_grad),
        )
        if isinstance(output, list | tuple):
            return type(output)(leaves)
        return leaves[0]

    handle = module.register_forward_hook(hook)
    try:
        yield cut
    finally:
        handle.remove()


@dataclass
class PhaseTimer:
    """Seconds per phase of a gradient method's backward, for the step-cost breakdown.

    Args:
        synchronize: Called before each clock reading (waits for queued GPU work).
    """

    synchronize: Callable[[], None] = lambda: None
    seconds: dict[str, list[float]] = field(default_factory=dict)
    task_gradient_bytes: list[int] = field(default_factory=list)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Adds the time spent inside to ``seconds[name]``."""
        self.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            self.seconds.setdefault(name, []).append(time.perf_counter() - start)


def timed_phase(timer: PhaseTimer | None, name: str) -> contextlib.AbstractContextManager[None]:
    """``timer.phase(name)``, or nothing when no timer is attached."""
    return contextlib.nullcontext() if timer is None else timer.phase(name)
