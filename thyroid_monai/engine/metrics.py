"""Ignite metrics for the TI-RADS head, fed from the evaluator's ``pred_cls``/``label_cls``."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.metrics import Metric
from monai.handlers import from_engine

from thyroid_monai import keys
from thyroid_monai.engine.scores import SCORES


class LevelScore(Metric):
    """Collects level logits and labels over an epoch and computes one score.

    Args:
        score: Name of a score in :data:`thyroid_monai.engine.scores.SCORES`.
        output_transform: Maps the engine output to ``(logits, labels)`` lists; the default reads
            the decollated ``pred_cls`` and ``label_cls``.
    """

    def __init__(
        self,
        score: str = "accuracy",
        output_transform: Callable[[Any], Any] | None = None,
    ):
        if score not in SCORES:
            raise ValueError(f"unknown score {score!r}; available: {', '.join(SCORES)}")
        self.score = SCORES[score]
        self._logits: list[torch.Tensor] = []
        self._labels: list[torch.Tensor] = []
        super().__init__(
            output_transform=output_transform or from_engine([keys.PRED_CLS, keys.LABEL_CLS])
        )

    def reset(self) -> None:
        """Forgets the collected samples."""
        self._logits = []
        self._labels = []

    def update(self, output: Sequence[Any]) -> None:
        """Adds a batch: ``(logits per sample, label per sample)``."""
        logits, labels = output
        self._logits.extend(torch.as_tensor(x).detach().float().cpu().view(-1) for x in logits)
        self._labels.extend(torch.as_tensor(y).detach().cpu().view(-1) for y in labels)

    def compute(self) -> float:
        """The score over every collected sample."""
        if not self._logits:
            raise RuntimeError("LevelScore needs at least one sample before compute()")
        probabilities = torch.softmax(torch.stack(self._logits), dim=1).numpy()
        labels = torch.cat(self._labels).numpy().astype(np.int64)
        return self.score(labels, probabilities)
