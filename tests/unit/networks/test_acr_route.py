import itertools

import numpy as np
import pytest
import torch

from thyroid_monai import descriptor_tasks
from thyroid_monai.networks.acr_route import (
    AcrPointsLevel,
    acr_level_log_probabilities,
    expected_acr_points,
)
from thyroid_monai.tirads import (
    ACR_LEVELS,
    AcrDescriptors,
    Composition,
    EchogenicFocus,
    Echogenicity,
    Margin,
    Shape,
    UnknownLabelError,
    acr_level_of,
    acr_points,
    get_grouping,
)

ENUMS = (Composition, Echogenicity, Shape, Margin)
CATEGORICAL_TASKS = tuple(descriptor_tasks.task_name(c) for c in descriptor_tasks.CATEGORICAL)
FOCI_SETS = tuple(itertools.product((False, True), repeat=len(EchogenicFocus)))
OPTIONS = [
    pytest.param(grouping, spongiform, one_point, id=f"{grouping}-sp{spongiform:d}-{one_point}")
    for grouping in ("acr5", "risk3", "binary")
    for spongiform in (True, False)
    for one_point in ("TR1", "TR2")
]


def _combinations():
    """Every categorical combination with every set of foci: (class indices, foci flags)."""
    for indices in itertools.product(*(range(len(enum)) for enum in ENUMS)):
        for foci in FOCI_SETS:
            yield indices, foci


def _descriptors(indices, foci):
    members = [list(enum)[i] for enum, i in zip(ENUMS, indices, strict=True)]
    present = frozenset(f for f, on in zip(EchogenicFocus, foci, strict=True) if on)
    return AcrDescriptors(*members, foci=present)


def _random_logits(batch, scale=2.0, dtype=torch.float32):
    return {
        descriptor_tasks.task_name(c): scale
        * torch.randn(batch, descriptor_tasks.num_outputs(c), dtype=dtype)
        for c in descriptor_tasks.CATEGORIES
    }


def _brute_force(logits, spongiform, one_point):
    """Level probabilities (TR1..TR5) and expected points by enumerating every combination."""
    probabilities = [
        torch.softmax(logits[task].double(), dim=1).numpy() for task in CATEGORICAL_TASKS
    ]
    focus = torch.sigmoid(logits[descriptor_tasks.FOCI_TASK].double()).numpy()
    batch = focus.shape[0]
    levels = np.zeros((batch, len(ACR_LEVELS)))
    expected = np.zeros(batch)
    for indices, foci in _combinations():
        weight = np.prod([p[:, i] for p, i in zip(probabilities, indices, strict=True)], axis=0)
        weight = weight * np.prod(np.where(foci, focus, 1.0 - focus), axis=1)
        descriptors = _descriptors(indices, foci)
        level = acr_level_of(
            descriptors, one_point_level=one_point, spongiform_adds_no_points=spongiform
        )
        levels[:, ACR_LEVELS.index(level)] += weight
        expected += weight * acr_points(descriptors, spongiform_adds_no_points=spongiform).total
    return torch.from_numpy(levels), torch.from_numpy(expected)


@pytest.mark.parametrize(("grouping", "spongiform", "one_point"), OPTIONS)
def test_confident_descriptors_give_the_level_of_the_acr_chart(grouping, spongiform, one_point):
    # one near-one-hot example per combination of descriptors: the route must agree with tirads
    combinations = list(_combinations())
    logits = {}
    for position, task in enumerate(CATEGORICAL_TASKS):
        chosen = torch.tensor([indices[position] for indices, _ in combinations])
        one_hot = torch.nn.functional.one_hot(chosen, len(ENUMS[position])).float()
        logits[task] = 60.0 * one_hot - 30.0
    foci = torch.tensor([flags for _, flags in combinations], dtype=torch.float32)
    logits[descriptor_tasks.FOCI_TASK] = 60.0 * foci - 30.0
    expected = torch.tensor(
        [
            get_grouping(grouping).index(
                acr_level_of(
                    _descriptors(indices, flags),
                    one_point_level=one_point,
                    spongiform_adds_no_points=spongiform,
                )
            )
            for indices, flags in combinations
        ]
    )
    probabilities = acr_level_log_probabilities(
        logits,
        grouping=grouping,
        spongiform_adds_no_points=spongiform,
        one_point_level=one_point,
    ).exp()
    assert torch.equal(probabilities.argmax(dim=1), expected)
    assert float(probabilities.max(dim=1).values.min()) > 0.999


@pytest.mark.parametrize("grouping", ["acr5", "risk3", "binary"])
def test_class_probabilities_are_a_distribution(grouping):
    logits = _random_logits(64, scale=5.0)
    log_probabilities = acr_level_log_probabilities(logits, grouping=grouping)
    assert log_probabilities.shape == (64, get_grouping(grouping).num_classes)
    probabilities = log_probabilities.exp()
    assert float(probabilities.min()) >= 0.0
    torch.testing.assert_close(probabilities.sum(dim=1), torch.ones(64))


@pytest.mark.parametrize("spongiform", [True, False])
@pytest.mark.parametrize("one_point", ["TR1", "TR2"])
def test_route_and_expected_points_equal_the_enumeration(spongiform, one_point):
    logits = _random_logits(3)
    levels, points = _brute_force(logits, spongiform, one_point)
    for grouping in ("acr5", "risk3", "binary"):
        route = AcrPointsLevel(
            grouping, spongiform_adds_no_points=spongiform, one_point_level=one_point
        )
        members = get_grouping(grouping).members
        classes = torch.zeros(3, route.num_classes, dtype=torch.float64)
        for column, level in enumerate(ACR_LEVELS):
            classes[:, members[level]] += levels[:, column]
        torch.testing.assert_close(route(logits).exp().double(), classes, atol=1e-5, rtol=0)
    torch.testing.assert_close(
        expected_acr_points(logits, spongiform_adds_no_points=spongiform).double(),
        points,
        atol=1e-4,
        rtol=1e-6,
    )


def test_total_distribution_matches_the_function_and_float64():
    logits = _random_logits(4, dtype=torch.float64)
    route = AcrPointsLevel("acr5")
    assert route.totals == tuple(range(18))  # 2 + 3 + 3 + 3 + (1 + 2 + 3): every total reachable
    totals = route.total_log_probabilities(logits).exp()
    not_spongiform = 1.0 - torch.softmax(logits["desc_composition"], dim=1)[:, 1]
    torch.testing.assert_close(totals.sum(dim=1), not_spongiform)
    torch.testing.assert_close(route(logits), acr_level_log_probabilities(logits))
    assert route(logits).dtype == torch.float64


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e30])
def test_gradients_reach_every_head_and_stay_finite(scale):
    logits = {task: value.requires_grad_() for task, value in _random_logits(8, scale).items()}
    log_probabilities = acr_level_log_probabilities(logits, grouping="risk3")
    assert bool(torch.isfinite(log_probabilities).all())
    # the loss of a (often confidently wrong) target class, as a level loss would use it
    targets = torch.arange(8) % 3
    torch.nn.functional.nll_loss(log_probabilities, targets).backward()
    for task, value in logits.items():
        assert value.grad is not None, task
        assert bool(torch.isfinite(value.grad).all()), task
        if scale == 1.0:
            assert float(value.grad.abs().max()) > 0.0, task


def test_bad_inputs_are_named():
    logits = _random_logits(2)
    del logits["desc_margin"]
    with pytest.raises(ValueError, match="desc_margin"):
        acr_level_log_probabilities(logits)
    with pytest.raises(ValueError, match="desc_margin"):
        expected_acr_points(logits)
    logits = _random_logits(2)
    logits["desc_echogenicity"] = torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"desc_echogenicity.*\(batch, 5\)"):
        acr_level_log_probabilities(logits)
    logits = _random_logits(2)
    logits["desc_foci"] = torch.randn(3, 4)
    with pytest.raises(ValueError, match="batch size"):
        acr_level_log_probabilities(logits)
    with pytest.raises(UnknownLabelError, match="grouping"):
        acr_level_log_probabilities(_random_logits(2), grouping="kwak6")
    with pytest.raises(UnknownLabelError, match="grouping"):
        AcrPointsLevel("acr4")
    with pytest.raises(ValueError, match="one_point_level"):
        AcrPointsLevel(one_point_level="TR3")  # type: ignore[arg-type]
