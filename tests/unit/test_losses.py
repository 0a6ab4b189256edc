import math

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from thyroid_monai import keys
from thyroid_monai.losses import (
    MultitaskLoss,
    coral_loss,
    expected_squared_distance,
    masked_binary_cross_entropy,
    masked_regression,
    soft_or_hard_cross_entropy,
)


def test_mask_loss_equals_monai_dice_ce_on_hard_labels_and_accepts_soft_ones():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 2, 16, 16, generator=generator, requires_grad=True)
    mask = (torch.rand(3, 1, 16, 16, generator=generator) > 0.5).float()
    loss = MultitaskLoss()
    expected = DiceCELoss(to_onehot_y=True, softmax=True, include_background=False)(logits, mask)
    torch.testing.assert_close(loss.mask_loss(logits, mask), expected)
    with_background = DiceCELoss(to_onehot_y=True, softmax=True)(logits, mask)
    torch.testing.assert_close(
        MultitaskLoss(dice_background=True).mask_loss(logits, mask), with_background
    )
    # two readers who disagree on every pixel: the soft target is 0.5 everywhere
    soft = loss.mask_loss(logits, torch.full_like(mask, 0.5))
    soft.backward()
    assert math.isfinite(soft.item())
    assert torch.count_nonzero(logits.grad) > 0


def test_predicting_no_nodule_costs_the_whole_dice_term():
    """With the background averaged in, an empty prediction costs only half the Dice term."""
    mask = torch.zeros(2, 1, 32, 32)
    mask[:, :, 12:18, 12:18] = 1.0  # a small nodule
    no_nodule = torch.stack([torch.full((2, 32, 32), 8.0), torch.full((2, 32, 32), -8.0)], dim=1)
    dice_only = {"dice_weight": 1.0, "ce_weight": 0.0}
    assert MultitaskLoss(**dice_only).mask_loss(no_nodule, mask).item() == pytest.approx(
        1.0, abs=1e-4
    )
    with_background = MultitaskLoss(dice_background=True, **dice_only)
    assert with_background.mask_loss(no_nodule, mask).item() == pytest.approx(0.5, abs=0.03)


def test_level_cross_entropy_hard_soft_smoothing_and_weights():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 3, generator=generator)
    labels = torch.tensor([0, 2, 1, 2])
    weights = torch.tensor([1.0, 2.0, 0.5])
    expected = F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.1)
    loss = MultitaskLoss(label_smoothing=0.1, class_weights=[1.0, 2.0, 0.5])
    torch.testing.assert_close(loss({keys.CLS: logits}, {keys.CLS: labels})[keys.CLS], expected)
    one_hot = F.one_hot(labels, 3).float()
    torch.testing.assert_close(
        soft_or_hard_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels)
    )
    # unknown labels (-1, or a NaN distribution row) are left out
    partial = torch.tensor([0, -1, 1, -1])
    torch.testing.assert_close(
        soft_or_hard_cross_entropy(logits, partial), F.cross_entropy(logits[[0, 2]], labels[[0, 2]])
    )
    nan_row = one_hot.clone()
    nan_row[1] = float("nan")
    torch.testing.assert_close(
        soft_or_hard_cross_entropy(logits, nan_row),
        F.cross_entropy(logits[[0, 2, 3]], labels[[0, 2, 3]]),
    )


def test_coral_loss_is_the_mean_binary_cross_entropy_over_thresholds():
    cumulative = torch.tensor([[2.0, 0.0, -1.0]])
    label = torch.tensor([2])  # above 0: yes, above 1: yes, above 2: no
    probabilities = torch.sigmoid(cumulative)[0]
    expected = (
        -(
            torch.log(probabilities[0])
            + torch.log(probabilities[1])
            + torch.log(1 - probabilities[2])
        )
        / 3
    )
    torch.testing.assert_close(coral_loss(cumulative, label), expected)
    loss = MultitaskLoss(level_loss="coral")
    outputs = {keys.CLS: torch.zeros(1, 4), keys.CLS_ORDINAL: cumulative}
    torch.testing.assert_close(loss(outputs, {keys.CLS: label})[keys.CLS], expected)
    with pytest.raises(ValueError, match="level_head"):
        loss({keys.CLS: torch.zeros(1, 4)}, {keys.CLS: label})
    with pytest.raises(ValueError, match="class_weights"):
        MultitaskLoss(level_loss="coral", class_weights=[1.0, 1.0])


def test_radiomics_loss_ignores_missing_entries():
    prediction = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.5, float("nan"), 1.0], [float("nan"), 1.0, float("nan")]])
    loss = masked_regression(prediction, target, "mse")
    assert loss.item() == pytest.approx((0.25 + 4.0 + 1.0) / 3)
    loss.backward()
    assert prediction.grad[0, 1] == 0
    assert prediction.grad[1, 0] == 0
    smooth = masked_regression(prediction, target, "smooth_l1", beta=1.0)
    assert smooth.item() == pytest.approx((0.125 + 1.5 + 0.5) / 3)


def test_a_task_without_any_known_target_gives_an_attached_zero():
    prediction = torch.randn(2, 3, requires_grad=True)
    unknown = torch.full((2, 3), float("nan"))
    for loss in (
        masked_regression(prediction, unknown, "mse"),
        masked_binary_cross_entropy(prediction, unknown),
        soft_or_hard_cross_entropy(prediction, torch.tensor([-1, -1])),
    ):
        assert loss.item() == 0.0
        (gradient,) = torch.autograd.grad(loss, prediction)
        assert torch.count_nonzero(gradient) == 0


def test_descriptor_losses_per_task_with_partial_labels():
    generator = torch.Generator().manual_seed(2)
    outputs = {
        "desc_composition": torch.randn(3, 5, generator=generator),
        "desc_shape": torch.randn(3, 2, generator=generator),
        "desc_foci": torch.randn(3, 4, generator=generator),
    }
    targets = {
        "desc_composition": torch.tensor([3, -1, 0]),
        "desc_shape": torch.tensor([1, 0, 1]),
        "desc_foci": torch.tensor([[0.0, 0, 0, 1], [float("nan")] * 4, [1.0, 0, 0, 0]]),
    }
    losses = MultitaskLoss()(outputs, targets)
    assert set(losses) == {"desc_composition", "desc_shape", "desc_foci"}
    torch.testing.assert_close(
        losses["desc_composition"],
        F.cross_entropy(outputs["desc_composition"][[0, 2]], torch.tensor([3, 0])),
    )
    torch.testing.assert_close(
        losses["desc_foci"],
        F.binary_cross_entropy_with_logits(
            outputs["desc_foci"][[0, 2]], targets["desc_foci"][[0, 2]]
        ),
    )


def test_losses_need_a_task_with_output_and_target_and_valid_options():
    with pytest.raises(ValueError, match="no task"):
        MultitaskLoss()({keys.SEG: torch.zeros(1, 2, 4, 4)}, {keys.CLS: torch.tensor([0])})
    with pytest.raises(ValueError, match="label_smoothing"):
        MultitaskLoss(label_smoothing=1.0)
    with pytest.raises(ValueError, match="radiomics_loss"):
        MultitaskLoss(radiomics_loss="huber")  # type: ignore[arg-type]


def test_unknown_masks_are_skipped_and_an_all_unknown_batch_costs_nothing():
    from thyroid_monai.losses import MultitaskLoss

    loss = MultitaskLoss()
    logits = torch.randn(3, 2, 16, 16, requires_grad=True)
    masks = (torch.rand(3, 1, 16, 16) > 0.7).float()
    unknown = masks.clone()
    unknown[1] = float("nan")
    known_only = loss.mask_loss(logits[[0, 2]], masks[[0, 2]])
    assert torch.allclose(loss.mask_loss(logits, unknown), known_only)
    nothing = loss.mask_loss(logits, torch.full_like(masks, float("nan")))
    assert float(nothing) == 0.0
    nothing.backward()  # attached to the graph, gradient zero
    assert float(logits.grad.abs().max()) == 0.0


def test_both_level_routes_are_trained_and_pulled_together():
    from thyroid_monai import keys
    from thyroid_monai.losses import MultitaskLoss

    direct = torch.log_softmax(torch.randn(4, 5), dim=1)
    acr = torch.log_softmax(torch.randn(4, 5), dim=1)
    target = torch.tensor([0, 2, 4, -1])
    mixture = torch.logsumexp(torch.stack([direct, acr]), dim=0) - math.log(2.0)
    outputs = {keys.CLS: mixture, keys.CLS_DIRECT: direct, keys.CLS_ACR: acr}
    plain = MultitaskLoss(route_consistency=0.0).level(outputs, target)
    each = [torch.nn.functional.nll_loss(r[:3], target[:3]) for r in (direct, acr)]
    assert torch.allclose(plain, 0.5 * (each[0] + each[1]))
    pulled = MultitaskLoss(route_consistency=1.0).level(outputs, target)
    assert float(pulled) > float(plain)  # the routes disagree: a positive divergence
    agreeing = {keys.CLS: direct, keys.CLS_DIRECT: direct, keys.CLS_ACR: direct}
    assert torch.allclose(
        MultitaskLoss(route_consistency=1.0).level(agreeing, target),
        MultitaskLoss(route_consistency=0.0).level(agreeing, target),
        atol=1e-6,
    )


def test_ordinal_term_is_the_expected_squared_level_distance():
    # a certain, right prediction costs nothing; a certain prediction at the far end costs 1
    certain = torch.full((2, 5), -30.0)
    certain[0, 2] = certain[1, 4] = 30.0
    distance = expected_squared_distance(certain, torch.tensor([2, 0]))
    assert distance.item() == pytest.approx(0.5, abs=1e-6)  # mean of 0 and 1
    # uniform prediction, level 0: (0 + 1 + 4 + 9 + 16) / 16 / 5
    uniform = torch.zeros(1, 5)
    assert expected_squared_distance(uniform, torch.tensor([0])).item() == pytest.approx(0.375)
    # a soft target averages the distance over it; unknown samples are skipped
    soft = torch.tensor([[0.5, 0.5, 0.0, 0.0, 0.0], [math.nan] * 5])
    expected = 0.5 * 0.375 + 0.5 * (1 + 0 + 1 + 4 + 9) / 16 / 5
    assert expected_squared_distance(uniform.repeat(2, 1), soft).item() == pytest.approx(expected)


def test_ordinal_weight_adds_the_term_and_favours_near_misses():
    target = torch.tensor([4])
    near = torch.tensor([[0.0, 0.0, 0.0, 2.0, 0.0]])  # most mass on TR4 for a TR5
    far = torch.tensor([[2.0, 0.0, 0.0, 0.0, 0.0]])  # the same mass on TR1
    plain = MultitaskLoss()
    ordinal = MultitaskLoss(level_ordinal_weight=2.0)
    for logits in (near, far):
        added = ordinal({keys.CLS: logits}, {keys.CLS: target})[keys.CLS]
        base = plain({keys.CLS: logits}, {keys.CLS: target})[keys.CLS]
        assert added.item() == pytest.approx(
            base.item() + 2.0 * expected_squared_distance(logits, target).item()
        )
    # the cross-entropy cannot tell the two apart; the ordinal term can
    assert plain({keys.CLS: near}, {keys.CLS: target})[keys.CLS].item() == pytest.approx(
        plain({keys.CLS: far}, {keys.CLS: target})[keys.CLS].item()
    )
    assert (
        ordinal({keys.CLS: near}, {keys.CLS: target})[keys.CLS]
        < ordinal({keys.CLS: far}, {keys.CLS: target})[keys.CLS]
    )
    with pytest.raises(ValueError, match="level_ordinal_weight"):
        MultitaskLoss(level_ordinal_weight=-1.0)
    with pytest.raises(ValueError, match="level_ordinal_weight"):
        MultitaskLoss(level_ordinal_weight=1.0, level_loss="coral")
