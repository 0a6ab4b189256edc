"""What RLAR sees: per-sample cosines between two tasks' latent gradients, over a training run.

RLAR penalises the cosine ``c_i`` between the mask's and the level's gradient directions at the
shared latent, sample by sample (:mod:`thyroid_monai.mtl.rlar`). Whether its penalty can act at
all depends on where those cosines lie: a hinge at ``tau`` is exactly zero while every ``c_i``
stays below it. :class:`AlignmentMonitor` measures the distribution during training, with or
without the penalty, with RLAR's own code (its latents and per-sample gradients), so a run
without RLAR shows what the penalty would see and a run with RLAR shows whether it moves it.

Every ``every``-th iteration, before the backward pass, the monitor takes the two tasks' per-sample
latent gradients (first order, no graph kept: two backward passes to the deepest map, shared by
``deepest`` and ``pooled``) and keeps each latent choice's cosines. At the end of each epoch it
writes their quantiles into the trainer's metrics, ``align_<latent>_p05 ... _p95``, the mean
cosine, the mean ``|c|`` and the share above the monitored margin, which MLflow records per epoch
and :class:`~thyroid_monai.tracking.GradientDiagnosticsFigure` draws as bands.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from thyroid_monai import keys
from thyroid_monai.mtl.rlar import RLAR, LatentChoice, rlar_penalty

ALIGNMENT_PREFIX = "align_"
"""Metric-name prefix of the monitor's epoch statistics (after the trainer's ``train_``)."""
QUANTILES = (5, 25, 50, 75, 95)


class AlignmentMonitor:
    """Measures the per-sample cosines RLAR would penalise, at several latent choices.

    Args:
        every: Measure every ``every``-th iteration (at least 1).
        latents: Latent choices of :class:`~thyroid_monai.mtl.rlar.RLAR` to measure at.
        tasks: The two tasks whose directions are compared.
        tau: Margin whose exceedance share is reported (RLAR's default).

    Raises:
        ValueError: For ``every < 1`` or an unknown latent (RLAR's own check).
    """

    def __init__(
        self,
        every: int = 10,
        latents: Sequence[LatentChoice] = ("deepest", "pooled"),
        tasks: Sequence[str] = (keys.SEG, keys.CLS),
        tau: float = 0.1,
    ):
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = int(every)
        self.tau = float(tau)
        self.tasks: tuple[str, str] = (tasks[0], tasks[1])
        self.probes: dict[str, RLAR] = {
            latent: RLAR(latent=latent, tasks=tasks, tau=tau) for latent in latents
        }
        self.cosines: dict[str, list[np.ndarray]] = {latent: [] for latent in self.probes}

    def due(self, iteration: int) -> bool:
        """Whether this (1-based) iteration is measured."""
        return (iteration - 1) % self.every == 0

    def measure(
        self, losses: Mapping[str, torch.Tensor], outputs: Mapping[str, Any]
    ) -> dict[str, np.ndarray]:
        """Records (and returns) this batch's per-sample cosines at every latent choice.

        Latent choices on the same tensors (``deepest`` and ``pooled`` both read the deepest map)
        share one backward pass per task. The graph of ``losses`` is kept for the step's own
        backward pass.
        """
        task_a, task_b = self.tasks
        if task_a not in losses or task_b not in losses:
            return {}
        gradients: dict[tuple[int, ...], tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        measured: dict[str, np.ndarray] = {}
        for latent, probe in self.probes.items():
            maps = probe.latents(outputs)
            key = tuple(id(m) for m in maps)
            if key not in gradients:
                unpooled = RLAR(latent="deepest", tasks=self.tasks)
                gradients[key] = (
                    unpooled.latent_gradients(losses[task_a], maps, create_graph=False),
                    unpooled.latent_gradients(losses[task_b], maps, create_graph=False),
                )
            grads_a, grads_b = (probe.shaped(g) for g in gradients[key])
            cosines = torch.stack(
                [
                    rlar_penalty(a, b, tau=self.tau, eps=probe.eps)[1]
                    for a, b in zip(grads_a, grads_b, strict=True)
                ]
            ).mean(dim=0)
            measured[latent] = cosines.detach().cpu().numpy()
            self.cosines[latent].append(measured[latent])
        return measured

    def epoch_statistics(self) -> dict[str, float]:
        """Quantiles, mean, mean ``|c|`` and share above tau of the cosines kept so far."""
        statistics: dict[str, float] = {}
        for latent, batches in self.cosines.items():
            if not batches:
                continue
            values = np.concatenate(batches)
            name = f"{ALIGNMENT_PREFIX}{latent}_"
            for quantile in QUANTILES:
                statistics[f"{name}p{quantile:02d}"] = float(np.percentile(values, quantile))
            statistics[f"{name}mean"] = float(values.mean())
            statistics[f"{name}abs_mean"] = float(np.abs(values).mean())
            statistics[f"{name}share_above_tau"] = float((values > self.tau).mean())
        return statistics

    def attach(self, engine: Engine, prefix: str = "train_") -> None:
        """Writes each epoch's statistics into ``engine.state.metrics`` (and starts afresh).

        Attach it before the handlers that read the epoch's metrics (MLflow, figures).
        """

        def write(engine: Engine) -> None:
            for name, value in self.epoch_statistics().items():
                engine.state.metrics[f"{prefix}{name}"] = value
            self.reset()

        engine.add_event_handler(Events.EPOCH_STARTED, lambda _: self.reset())
        engine.add_event_handler(Events.EPOCH_COMPLETED, write)

    def reset(self) -> None:
        """Forgets the cosines kept so far."""
        self.cosines = {latent: [] for latent in self.probes}


__all__ = ["ALIGNMENT_PREFIX", "QUANTILES", "AlignmentMonitor"]
