"""The ACR route: level probabilities computed from the descriptor heads by the ACR chart.

The descriptor heads predict one distribution per ACR category (a softmax for composition,
echogenicity, shape and margin; one sigmoid per echogenic-focus type). If the categories (and the
focus types) are independent given the image, the distribution of the ACR point total is the
convolution of the per-category point distributions, and the level distribution follows by
mapping each total to its level (:func:`thyroid_monai.tirads.acr_level`) and each level to a class
of a label grouping. This gives a level prediction that is consistent with the chart by
construction and differentiable, so a level loss can train the descriptor heads through it.

The lexicon's spongiform rule (:func:`thyroid_monai.tirads.acr_points`) zeroes *every* category
of a spongiform nodule, foci included, so with ``spongiform_adds_no_points=True`` the total is a
mixture: ``P(spongiform)`` at 0 points, plus the convolution over the non-spongiform compositions
with all the other categories.

Everything is computed in log space (``log_softmax``, ``logsigmoid``, ``logsumexp``): the
log-probabilities are exact, finite for finite logits, and a confidently wrong prediction still
gets a gradient (a probability clamped before its logarithm would get none).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final, Literal

import torch
from torch import Tensor, nn

from thyroid_monai import descriptor_tasks
from thyroid_monai.tirads import (
    COMPOSITION_POINTS,
    ECHOGENICITY_POINTS,
    FOCUS_POINTS,
    MARGIN_POINTS,
    SHAPE_POINTS,
    Composition,
    EchogenicFocus,
    acr_level,
    get_grouping,
)

OnePointLevel = Literal["TR1", "TR2"]

_CATEGORY_POINTS: Final[Mapping[str, Mapping[Any, int]]] = {
    "composition": COMPOSITION_POINTS,
    "echogenicity": ECHOGENICITY_POINTS,
    "shape": SHAPE_POINTS,
    "margin": MARGIN_POINTS,
}
"""Points table of each categorical category, from :mod:`thyroid_monai.tirads`."""

_COMPOSITION_TASK: Final = descriptor_tasks.task_name("composition")
_SPONGIFORM_INDEX: Final = list(Composition).index(Composition.SPONGIFORM)


def class_points(category: str) -> tuple[int, ...]:
    """ACR points of each class of a descriptor head, in the head's class order.

    Args:
        category: ``"composition"``, ``"echogenicity"``, ``"shape"``, ``"margin"`` or ``"foci"``
            (for foci: the points of each focus type when present).

    Returns:
        One point value per logit of the category's head.
    """
    if category == descriptor_tasks.FOCI:
        return tuple(FOCUS_POINTS[focus] for focus in EchogenicFocus)
    enum = descriptor_tasks.CATEGORICAL[category]
    return tuple(_CATEGORY_POINTS[category][member] for member in enum)


def _validated_logits(descriptor_logits: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The five heads' logits, checked for presence and shape ``(batch, num_outputs)``."""
    checked: dict[str, Tensor] = {}
    for category in descriptor_tasks.CATEGORIES:
        task = descriptor_tasks.task_name(category)
        if task not in descriptor_logits:
            raise ValueError(f"descriptor logits lack the task {task!r}")
        logits = descriptor_logits[task]
        expected = descriptor_tasks.num_outputs(category)
        if logits.ndim != 2 or logits.shape[1] != expected:
            raise ValueError(
                f"logits of {task!r} must have shape (batch, {expected}), got {tuple(logits.shape)}"
            )
        checked[task] = logits
    batch_sizes = {logits.shape[0] for logits in checked.values()}
    if len(batch_sizes) != 1:
        raise ValueError(f"descriptor logits disagree on the batch size: {sorted(batch_sizes)}")
    return checked


def _group_index(keys: Sequence[int], num_groups: int) -> Tensor:
    """Index ``(num_groups, largest group)`` of the items with each key, padded with ``len(keys)``.

    Used with :func:`_grouped_logsumexp`, whose extra column at ``len(keys)`` holds ``-inf``.
    """
    members: list[list[int]] = [[] for _ in range(num_groups)]
    for item, key in enumerate(keys):
        members[key].append(item)
    empty = [group for group, items in enumerate(members) if not items]
    if empty:
        # an empty group would be a logsumexp over -inf only: NaN gradients
        raise ValueError(f"groups {empty} have no members (an unreachable total or class)")
    width = max(len(items) for items in members)
    return torch.tensor([items + [len(keys)] * (width - len(items)) for items in members])


def _grouped_logsumexp(values: Tensor, index: Tensor) -> Tensor:
    """``log sum exp`` of ``values`` (batch, items) over each group of :func:`_group_index`."""
    padding = values.new_full((values.shape[0], 1), float("-inf"))
    # every group has a finite member, so the -inf padding adds exp(-inf) = 0 to value and gradient
    return torch.logsumexp(torch.cat([values, padding], dim=1)[:, index], dim=-1)


class AcrPointsLevel(nn.Module):
    """Class log-probabilities of a label grouping from descriptor logits, by the ACR chart.

    The total -> class mapping and the convolution's index tables are built once here.

    Args:
        grouping: An ACR label grouping of :func:`thyroid_monai.tirads.get_grouping` (``"acr5"``,
            ``"risk3"`` or ``"binary"``).
        spongiform_adds_no_points: The lexicon's rule that a spongiform nodule scores 0 in every
            category (as :func:`thyroid_monai.tirads.acr_points`).
        one_point_level: Level of a total of 1 point (as :func:`thyroid_monai.tirads.acr_level`).

    Raises:
        UnknownLabelError: If the grouping is not an ACR grouping.
        ValueError: If ``one_point_level`` is not TR1 or TR2.
    """

    _class_index: Tensor

    def __init__(
        self,
        grouping: str = "acr5",
        *,
        spongiform_adds_no_points: bool = True,
        one_point_level: OnePointLevel = "TR1",
    ):
        super().__init__()
        self.grouping = get_grouping(grouping, "acr")
        self.spongiform_adds_no_points = spongiform_adds_no_points
        self.one_point_level = one_point_level
        self._convolution_steps: list[str] = []
        totals: tuple[int, ...] = (0,)
        for step, points in enumerate(self._factor_points()):
            pair_totals = [total + p for total in totals for p in points]
            totals = tuple(sorted(set(pair_totals)))
            keys = [totals.index(total) for total in pair_totals]
            name = f"_step{step}"
            self.register_buffer(name, _group_index(keys, len(totals)), persistent=False)
            self._convolution_steps.append(name)
        # every reachable total of a non-spongiform nodule, in the columns' order
        self.totals = totals
        final_totals = list(totals)
        if spongiform_adds_no_points:
            final_totals.append(0)  # the spongiform mass, appended after the convolution
        levels = [acr_level(total, one_point_level=one_point_level) for total in final_totals]
        classes = [self.grouping.index(level) for level in levels]
        self.register_buffer(
            "_class_index", _group_index(classes, self.grouping.num_classes), persistent=False
        )

    @property
    def num_classes(self) -> int:
        """Number of classes of the grouping."""
        return self.grouping.num_classes

    def _factor_points(self) -> list[tuple[int, ...]]:
        """Points of each independent factor, in the order of :meth:`_factor_log_probabilities`."""
        composition = list(class_points("composition"))
        if self.spongiform_adds_no_points:
            del composition[_SPONGIFORM_INDEX]  # its mass bypasses the convolution
        factors = [tuple(composition)]
        factors += [class_points(c) for c in ("echogenicity", "shape", "margin")]
        # a focus type is a two-class factor: absent (0 points) or present (its points)
        factors += [(0, points) for points in class_points(descriptor_tasks.FOCI)]
        return factors

    def _factor_log_probabilities(self, logits: Mapping[str, Tensor]) -> list[Tensor]:
        """Log-probabilities ``(batch, classes)`` of each factor of :meth:`_factor_points`."""
        composition = torch.log_softmax(logits[_COMPOSITION_TASK], dim=1)
        if self.spongiform_adds_no_points:
            keep = [i for i in range(composition.shape[1]) if i != _SPONGIFORM_INDEX]
            composition = composition[:, keep]
        factors = [composition]
        for category in ("echogenicity", "shape", "margin"):
            task = descriptor_tasks.task_name(category)
            factors.append(torch.log_softmax(logits[task], dim=1))
        foci = logits[descriptor_tasks.FOCI_TASK]
        # logsigmoid(-x) = log(1 - sigmoid(x)) without cancellation
        factors += [
            torch.stack([nn.functional.logsigmoid(-x), nn.functional.logsigmoid(x)], dim=1)
            for x in foci.unbind(dim=1)
        ]
        return factors

    def total_log_probabilities(self, descriptor_logits: Mapping[str, Tensor]) -> Tensor:
        """Log-probabilities ``(batch, len(totals))`` of the point totals of non-spongiform nodules.

        With ``spongiform_adds_no_points`` these sum to ``log(1 - P(spongiform))``; otherwise
        to 0. :attr:`totals` names the columns.
        """
        logits = _validated_logits(descriptor_logits)
        factors = self._factor_log_probabilities(logits)
        batch = factors[0].shape[0]
        distribution = factors[0].new_zeros(batch, 1)  # log P(total = 0) = 0 before any factor
        for factor, name in zip(factors, self._convolution_steps, strict=True):
            index: Tensor = getattr(self, name)
            pairs = (distribution[:, :, None] + factor[:, None, :]).flatten(1)
            distribution = _grouped_logsumexp(pairs, index.to(pairs.device))
        return distribution

    def forward(self, descriptor_logits: Mapping[str, Tensor]) -> Tensor:
        """Class log-probabilities ``(batch, num_classes)`` of the grouping.

        Args:
            descriptor_logits: ``{task: logits}`` with the five ``desc_*`` tasks, batch first
                (other keys are ignored).

        Returns:
            Log-probabilities whose exponentials sum to 1 over the classes.

        Raises:
            ValueError: If a task is missing or its logits do not have the head's class count.
        """
        values = self.total_log_probabilities(descriptor_logits)
        if self.spongiform_adds_no_points:
            composition = torch.log_softmax(descriptor_logits[_COMPOSITION_TASK], dim=1)
            values = torch.cat(
                [values, composition[:, _SPONGIFORM_INDEX : _SPONGIFORM_INDEX + 1]], 1
            )
        return _grouped_logsumexp(values, self._class_index.to(values.device))


@lru_cache(maxsize=16)
def _cached_route(
    grouping: str, spongiform_adds_no_points: bool, one_point_level: OnePointLevel
) -> AcrPointsLevel:
    # the index tables stay on the CPU; forward moves them to the logits' device (cheap: tiny)
    return AcrPointsLevel(
        grouping,
        spongiform_adds_no_points=spongiform_adds_no_points,
        one_point_level=one_point_level,
    )


def acr_level_log_probabilities(
    descriptor_logits: Mapping[str, Tensor],
    *,
    grouping: str = "acr5",
    spongiform_adds_no_points: bool = True,
    one_point_level: OnePointLevel = "TR1",
) -> Tensor:
    """Class log-probabilities of a label grouping from the descriptor heads, by the ACR chart.

    The categories and the focus types are taken as independent given the image; the point
    total's distribution is then exact (see the module docstring), and it is mapped to levels and
    classes as :func:`thyroid_monai.tirads.acr_level_of` maps one nodule.

    Args:
        descriptor_logits: ``{task: logits}`` with ``desc_composition``, ``desc_echogenicity``,
            ``desc_shape``, ``desc_margin`` (softmax logits) and ``desc_foci`` (one sigmoid logit
            per focus type), each ``(batch, outputs)``.
        grouping: ACR label grouping: ``"acr5"``, ``"risk3"`` or ``"binary"``.
        spongiform_adds_no_points: A spongiform nodule scores 0 in every category.
        one_point_level: Level of a total of 1 point, ``"TR1"`` or ``"TR2"``.

    Returns:
        ``(batch, num_classes)`` log-probabilities, finite for finite logits and differentiable
        with respect to every head's logits.

    Raises:
        ValueError: If a task is missing or its logits have the wrong class count (the message
            names the task and the expected count), or ``one_point_level`` is invalid.
        UnknownLabelError: If the grouping is not an ACR grouping.
    """
    route = _cached_route(grouping, spongiform_adds_no_points, one_point_level)
    return route(descriptor_logits)


def expected_acr_points(
    descriptor_logits: Mapping[str, Tensor], *, spongiform_adds_no_points: bool = True
) -> Tensor:
    """Expected ACR point total under the descriptor heads' distributions (for reports).

    Args:
        descriptor_logits: The five heads' logits, as for :func:`acr_level_log_probabilities`.
        spongiform_adds_no_points: A spongiform nodule scores 0 in every category.

    Returns:
        ``(batch,)`` expected totals.

    Raises:
        ValueError: If a task is missing or its logits have the wrong class count.
    """
    logits = _validated_logits(descriptor_logits)
    composition = torch.softmax(logits[_COMPOSITION_TASK], dim=1)
    others = _expected_points(
        descriptor_tasks.FOCI, torch.sigmoid(logits[descriptor_tasks.FOCI_TASK])
    )
    for category in ("echogenicity", "shape", "margin"):
        probabilities = torch.softmax(logits[descriptor_tasks.task_name(category)], dim=1)
        others = others + _expected_points(category, probabilities)
    if not spongiform_adds_no_points:
        return _expected_points("composition", composition) + others
    # a spongiform nodule adds nothing: by independence the other categories count with
    # probability 1 - P(spongiform), and spongiform's own points are dropped
    not_spongiform = 1.0 - composition[:, _SPONGIFORM_INDEX]
    keep = torch.ones_like(composition[0])
    keep[_SPONGIFORM_INDEX] = 0.0
    return _expected_points("composition", composition * keep) + not_spongiform * others


def _expected_points(category: str, probabilities: Tensor) -> Tensor:
    """Expected points ``(batch,)`` of one category from its class (or focus) probabilities."""
    points = torch.tensor(class_points(category), dtype=probabilities.dtype)
    return probabilities @ points.to(probabilities.device)
