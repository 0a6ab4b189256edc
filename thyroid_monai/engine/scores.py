"""Classification scores as pure functions of integer labels and class probabilities."""

from __future__ import annotations

import numpy as np


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``[true, predicted]`` counts."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.astype(np.int64), predictions.astype(np.int64)), 1)
    return matrix


def accuracy(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Share of samples whose most probable class is the label."""
    return float(np.mean(probabilities.argmax(axis=1) == labels))


def macro_f1(labels: np.ndarray, probabilities: np.ndarray) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    num_classes = probabilities.shape[1]
    matrix = confusion_matrix(labels, probabilities.argmax(axis=1), num_classes)
    true_positive = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    actual = matrix.sum(axis=1)
    present = (predicted + actual) > 0
    denominator = predicted + actual
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros(num_classes), where=denominator > 0)
    return float(f1[present].mean()) if present.any() else 0.0


SCORES = {"accuracy": accuracy, "macro_f1": macro_f1}
