import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import (
    balanced_accuracy_score,
    cohen_kappa_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from thyroid_monai.engine import scores


@pytest.fixture
def predictions():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=300)
    logits = rng.normal(size=(300, 4)) + 1.5 * np.eye(4)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


def test_classification_scores_match_scikit_learn(predictions):
    labels, probabilities = predictions
    predicted = probabilities.argmax(axis=1)
    assert scores.balanced_accuracy(labels, probabilities) == pytest.approx(
        balanced_accuracy_score(labels, predicted)
    )
    assert scores.quadratic_weighted_kappa(labels, probabilities) == pytest.approx(
        cohen_kappa_score(labels, predicted, weights="quadratic")
    )
    assert scores.auc_one_vs_rest(labels, probabilities) == pytest.approx(
        roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    precision, recall, f1, support = precision_recall_fscore_support(labels, predicted)
    table = scores.per_class_table(labels, probabilities, ["a", "b", "c", "d"])
    assert [row["precision"] for row in table] == pytest.approx(precision)
    assert [row["recall"] for row in table] == pytest.approx(recall)
    assert [row["f1"] for row in table] == pytest.approx(f1)
    assert [row["support"] for row in table] == support.tolist()


def test_auc_with_ties_and_a_missing_class():
    labels = np.array([0, 0, 1, 1, 1])
    probabilities = np.array(
        [[0.6, 0.4, 0], [0.5, 0.5, 0], [0.5, 0.5, 0], [0.2, 0.8, 0], [0.5, 0.5, 0]]
    )
    # class 2 has no positive sample: averaged over classes 0 and 1 only
    expected = np.mean([roc_auc_score(labels == k, probabilities[:, k]) for k in (0, 1)])
    assert scores.auc_one_vs_rest(labels, probabilities) == pytest.approx(expected)
    assert math.isnan(scores.auc_one_vs_rest(np.zeros(3, int), np.full((3, 2), 0.5)))


def test_expected_calibration_error_by_hand():
    labels = np.array([0, 0, 1, 1])
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right), with 10 bins
    probabilities = np.array([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6], [0.4, 0.6]])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert scores.expected_calibration_error(labels, probabilities, bins=10) == pytest.approx(
        expected
    )


def test_kappa_is_nan_when_undefined():
    assert math.isnan(
        scores.quadratic_weighted_kappa(np.zeros(4, int), np.tile([1.0, 0.0], (4, 1)))
    )


def square(top, left, size, shape=(32, 32)):
    mask = np.zeros(shape, bool)
    mask[top : top + size, left : left + size] = True
    return mask


def test_overlap_scores_by_hand():
    a, b = square(0, 0, 4), square(0, 2, 4)  # 16 pixels each, 8 shared
    assert scores.dice(a, b) == pytest.approx(2 * 8 / 32)
    assert scores.iou(a, b) == pytest.approx(8 / 24)
    empty = np.zeros((32, 32), bool)
    assert scores.dice(empty, empty) == 1.0
    assert scores.iou(empty, empty) == 1.0
    assert scores.dice(a, empty) == 0.0


def test_hausdorff_95_in_pixels_and_millimetres():
    a, b = square(5, 5, 10), square(5, 8, 10)  # the same square moved 3 pixels along axis 1
    assert scores.hausdorff_95(a, b) == pytest.approx(3.0)
    assert scores.hausdorff_95(a, b, spacing=(0.5, 0.2)) == pytest.approx(0.6)
    assert scores.hausdorff_95(a, a) == 0.0
    empty = np.zeros_like(a)
    assert scores.hausdorff_95(empty, empty) == 0.0
    # one empty mask: the image diagonal, in the units of the spacing
    assert scores.hausdorff_95(a, empty, spacing=(1.0, 2.0)) == pytest.approx(math.hypot(31, 62))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    spacing=st.tuples(st.floats(0.05, 2.0), st.floats(0.05, 2.0)),
    percentile=st.sampled_from([50.0, 95.0, 100.0]),
)
def test_hausdorff_95_equals_monai(seed, spacing, percentile):
    """Our numpy HD95 is MONAI's compute_hausdorff_distance, also for masks at the image border."""
    import torch
    from monai.metrics import compute_hausdorff_distance

    rng = np.random.default_rng(seed)
    shape = tuple(int(n) for n in rng.integers(8, 40, size=2))
    masks = []
    for _ in range(2):
        # a few random blobs, some touching the border, some with holes
        mask = np.zeros(shape, bool)
        for _ in range(int(rng.integers(1, 4))):
            centre = rng.uniform(0, shape)
            radii = rng.uniform(1, 12, size=2)
            rows, cols = np.ogrid[: shape[0], : shape[1]]
            blob = ((rows - centre[0]) / radii[0]) ** 2 + ((cols - centre[1]) / radii[1]) ** 2 <= 1
            mask ^= blob if rng.random() < 0.2 else (blob & ~mask)
        mask[tuple(rng.integers(0, shape))] = True  # never empty
        masks.append(mask)

    def one_hot(mask):
        foreground = torch.as_tensor(mask, dtype=torch.float32)[None, None]
        return torch.cat([1.0 - foreground, foreground], dim=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = compute_hausdorff_distance(
            one_hot(masks[0]), one_hot(masks[1]), include_background=False,
            percentile=percentile, spacing=list(spacing),
        ).item()  # fmt: skip
    actual = scores.hausdorff_95(masks[0], masks[1], spacing, percentile)
    assert actual == pytest.approx(expected, rel=1e-5, abs=1e-5)
