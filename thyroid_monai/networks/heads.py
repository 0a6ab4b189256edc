"""Ordinal heads for the TI-RADS level, and their class probabilities.

TI-RADS levels are ordered, so the level can be predicted as K-1 binary questions "is the level
above k?" instead of K unrelated classes. Both heads below output these K-1 *cumulative logits*
``l_k = logit P(y > k)``:

* ``coral`` (Cao, Mirjalili and Raschka 2020, "Rank consistent ordinal regression"): one shared
  weight vector and K-1 biases, ``l_k = w.e + b_k``. The ordering of the biases is learned, not
  enforced.
* ``cumulative_link`` (proportional odds, McCullagh 1980): one score ``f = w.e`` and ordered
  cut-points ``t_1 < ... < t_{K-1}``, ``l_k = f - t_k``; the order is built in
  (``t = t_1 + cumsum(softplus(d))``), so ``P(y > k)`` always decreases with ``k``.

:func:`ordinal_log_probabilities` turns cumulative logits into class log-probabilities
``P(y = k) = P(y > k-1) - P(y > k)``, so ordinal heads feed the same metrics as a softmax head.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

OrdinalLink = Literal["coral", "cumulative_link"]
PROBABILITY_FLOOR = 1e-7
"""Smallest class probability kept before the logarithm (an unordered CORAL head can give a
difference below zero; it is floored, then the probabilities are renormalised)."""


def _uniform_cumulative_logits(num_classes: int) -> torch.Tensor:
    """``logit P(y > k)`` of a uniform class distribution: the initial thresholds."""
    above = torch.tensor(
        [(num_classes - 1 - k) / num_classes for k in range(num_classes - 1)], dtype=torch.float32
    )
    return torch.log(above) - torch.log1p(-above)


class OrdinalHead(nn.Module):
    """Maps an embedding to K-1 cumulative logits ``logit P(y > k)``.

    Both links start from the uniform class distribution (thresholds at its quantiles), so no class
    starts with a vanishing probability.

    Args:
        in_features: Embedding size.
        num_classes: Number of ordered classes K (at least 2).
        link: ``"coral"`` or ``"cumulative_link"`` (see the module docstring).
    """

    def __init__(self, in_features: int, num_classes: int, link: OrdinalLink = "coral"):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"an ordinal head needs at least 2 classes, got {num_classes}")
        if link not in ("coral", "cumulative_link"):
            raise ValueError(f"unknown ordinal link {link!r}; use 'coral' or 'cumulative_link'")
        self.link = link
        self.score = nn.Linear(in_features, 1, bias=False)
        start = _uniform_cumulative_logits(num_classes)
        if link == "coral":
            self.biases = nn.Parameter(start.clone())
        else:
            cutpoints = -start  # l_k = f - t_k, so t_k = -logit P(y > k) at f = 0
            gaps = cutpoints[1:] - cutpoints[:-1]
            self.first_cutpoint = nn.Parameter(cutpoints[:1].clone())
            # inverse softplus, so that softplus(gap_parameters) == gaps at initialisation
            self.gap_parameters = nn.Parameter(gaps + torch.log(-torch.expm1(-gaps)))

    def cutpoints(self) -> torch.Tensor:
        """Ordered cut-points ``t_k`` of the cumulative link (increasing by construction)."""
        gaps = nn.functional.softplus(self.gap_parameters)
        return torch.cat([self.first_cutpoint, self.first_cutpoint + torch.cumsum(gaps, 0)])

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        """Cumulative logits ``(batch, K-1)``."""
        score = self.score(embedding)
        if self.link == "coral":
            return score + self.biases
        return score - self.cutpoints()


def ordinal_log_probabilities(cumulative_logits: torch.Tensor) -> torch.Tensor:
    """Class log-probabilities ``(batch, K)`` from cumulative logits ``(batch, K-1)``.

    ``P(y = k) = P(y > k-1) - P(y > k)`` with ``P(y > -1) = 1`` and ``P(y > K-1) = 0``; values
    below :data:`PROBABILITY_FLOOR` are floored and the distribution renormalised.
    """
    above = torch.sigmoid(cumulative_logits)
    ones = torch.ones_like(above[:, :1])
    upper = torch.cat([ones, above], dim=1)
    lower = torch.cat([above, torch.zeros_like(ones)], dim=1)
    probabilities = (upper - lower).clamp_min(PROBABILITY_FLOOR)
    return torch.log(probabilities) - torch.log(probabilities.sum(dim=1, keepdim=True))


def cumulative_targets(class_probabilities: torch.Tensor) -> torch.Tensor:
    """``P(y > k)`` targets ``(batch, K-1)`` from class distributions ``(batch, K)``."""
    tail = torch.flip(torch.cumsum(torch.flip(class_probabilities, [1]), dim=1), [1])
    return tail[:, 1:]


__all__ = [
    "OrdinalHead",
    "OrdinalLink",
    "cumulative_targets",
    "ordinal_log_probabilities",
]
