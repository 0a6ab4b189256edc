"""Confusion-matrix and sample-overlay figures of an evaluation, redrawn on a new best metric."""

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

from thyroid_monai.engine import MultitaskScores
from thyroid_monai.tracking import ConfusionMatrixFigure, SampleOverlayFigure

BEST_EPOCHS = {1, 3}  # the key metric improves at epochs 1 and 3, not at 2


def sample(level, predicted, width=12, height=8):
    """One decollated evaluator output: x-first tensors, a nodule in the upper-left corner."""
    mask = torch.zeros(1, width, height)
    mask[0, 2:6, 1:4] = 1  # x 2..5, y 1..3
    logits = torch.zeros(2, width, height)
    logits[1, 3:7, 1:4] = 5.0
    level_logits = torch.full((5,), -2.0)
    level_logits[predicted] = 2.0
    return {"image": torch.rand(1, width, height), "label": mask, "pred": logits,
            "pred_cls": level_logits, "label_cls": torch.tensor(level),
            "label_cls_true": torch.tensor(level)}  # fmt: skip


def evaluator(batches, *handlers):
    """An ignite engine shaped like MONAI's evaluator: decollated output, best-metric state."""
    engine = Engine(lambda engine, batch: batch)
    scores = MultitaskScores(prefix="val_")
    scores.attach(engine, "val_accuracy")

    @engine.on(Events.EPOCH_COMPLETED)
    def _best_metric(engine):  # MONAI updates these before the handlers attached after it
        if engine.state.epoch in BEST_EPOCHS:
            engine.state.best_metric_epoch = engine.state.epoch

    for handler in handlers:
        handler(scores).attach(engine)
    return engine


def test_confusion_matrix_is_drawn_on_each_new_best_evaluation(tmp_path):
    drawn = []

    class Recording(ConfusionMatrixFigure):
        def draw(self, panels, epoch):
            drawn.append((epoch, {k: v["confusion_matrix"] for k, v in panels.items()}))
            return super().draw(panels, epoch)

    batches = [[sample(0, 0), sample(2, 1)], [sample(4, 4)]]
    engine = evaluator(batches, lambda scores: Recording(scores, tmp_path / "cm.png"))
    engine.run(batches, max_epochs=3)
    assert [epoch for epoch, _ in drawn] == [1, 3]
    matrix = drawn[0][1]["readers' labels"]
    assert matrix[0][0] == 1
    assert matrix[2][1] == 1
    assert matrix[4][4] == 1
    assert set(drawn[0][1]) == {"readers' labels", "truth"}
    assert (tmp_path / "cm.png").read_bytes().startswith(b"\x89PNG")


def test_overlays_keep_the_first_samples_in_rows_and_columns(tmp_path):
    figures = []

    def overlay(scores):
        figures.append(SampleOverlayFigure(tmp_path / "overlays.png", num_samples=3, columns=2))
        return figures[0]

    batches = [[sample(1, 1), sample(2, 3)], [sample(3, 3), sample(4, 0)]]
    engine = evaluator(batches, overlay)
    engine.run(batches, max_epochs=1)
    figure = figures[0]
    assert len(figure.samples) == 3
    first = figure.samples[0]
    assert first["image"].shape == (8, 12)  # (rows, cols) = (y, x)
    assert first["reference"][1:4, 2:6].all()
    assert first["reference"].sum() == 12
    assert first["prediction"][1:4, 3:7].all()
    assert first["prediction"].sum() == 12
    assert figure._caption(figure.samples[1]) == "reference TR3\ntruth TR3\npredicted TR4 (0.93)"
    assert (tmp_path / "overlays.png").read_bytes().startswith(b"\x89PNG")


def test_overlays_of_a_mask_only_model_and_every_evaluation(tmp_path):
    figure = SampleOverlayFigure(tmp_path / "o.png", only_best=False)
    mask_only = {"image": torch.rand(1, 6, 6), "label": torch.ones(1, 6, 6), "pred": None}
    kept = figure.sample(mask_only)
    assert kept["probabilities"] is None
    assert kept["prediction"] is None
    assert figure._caption(kept) == ""
    figure.draw([kept], epoch=2)
    assert (tmp_path / "o.png").stat().st_size > 0
    with pytest.raises(ValueError, match="num_samples"):
        SampleOverlayFigure(tmp_path / "x.png", num_samples=0)


def test_soft_level_targets_are_read_as_their_most_likely_class(tmp_path):
    figure = SampleOverlayFigure(tmp_path / "o.png")
    soft = sample(0, 0)
    soft["label_cls"] = torch.tensor([0.1, 0.2, 0.6, 0.1, 0.0])
    soft["label_cls_true"] = torch.tensor(-1)
    kept = figure.sample(soft)
    assert kept["level"] == 2
    assert kept["level_truth"] is None
    assert np.isclose(kept["probabilities"].sum(), 1.0)
