"""Gradient-conflict diagnostics, computed from the Gram matrix of the per-task gradients.

Every name below becomes a float in ``engine.state.output``; the trainer's epoch means turn it
into ``train_<name>`` in MLflow, so the share of conflicting steps of an epoch is the epoch mean of
``conflict``.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import torch

NORM_PREFIX = "grad_norm_"
COSINE_PREFIX = "grad_cos_"
WEIGHT_PREFIX = "weight_"
CONFLICT = "conflict"


def gradient_diagnostics(
    gram: torch.Tensor, tasks: Sequence[str], eps: float = 1e-12
) -> dict[str, float]:
    """Norms, pairwise cosines and the conflict indicator of one step.

    Args:
        gram: ``[tasks, tasks]`` Gram matrix ``G G^T`` of the per-task gradients.
        tasks: Task names in row order.
        eps: A task whose gradient norm is at most ``eps`` has cosine 0 with every other.

    Returns:
        ``grad_norm_<task>`` per task; ``grad_cos_<a>_<b>`` per pair; ``grad_cos_min``, the least
        cosine of any pair, and ``conflict`` (1.0 when some pair has a negative cosine, else 0.0)
        when there are at least two tasks.
    """
    if gram.shape != (len(tasks), len(tasks)):
        raise ValueError(f"Gram matrix of shape {tuple(gram.shape)} for {len(tasks)} tasks")
    gram64 = gram.detach().to(torch.float64).cpu()
    norms = gram64.diagonal().clamp_min(0).sqrt()
    diagnostics = {f"{NORM_PREFIX}{task}": float(n) for task, n in zip(tasks, norms, strict=True)}
    cosines = []
    for a, b in combinations(range(len(tasks)), 2):
        scale = norms[a] * norms[b]
        cosine = float(gram64[a, b] / scale) if scale > eps else 0.0
        cosines.append(cosine)
        diagnostics[f"{COSINE_PREFIX}{tasks[a]}_{tasks[b]}"] = cosine
    if cosines:
        diagnostics[f"{COSINE_PREFIX}min"] = min(cosines)
        diagnostics[CONFLICT] = float(min(cosines) < 0)
    return diagnostics
