import json
import math

import numpy as np
import pytest
import torch
from ignite.engine import Engine

from thyroid_monai import descriptor_tasks
from thyroid_monai.engine import EvaluationReportSaver, MultitaskScores
from thyroid_monai.engine import scores as s


def mask(top, left, size=6):
    m = torch.zeros(1, 16, 16)
    m[:, top : top + size, left : left + size] = 1
    return m


def logits_of(m):
    """Two-channel logits whose argmax is the mask."""
    return torch.cat([1 - m, m]) * 4 - 2


def descriptor_logits(composition, echogenicity, shape, margin, foci):
    chosen = {"desc_composition": composition, "desc_echogenicity": echogenicity,
              "desc_shape": shape, "desc_margin": margin}  # fmt: skip
    outputs = {}
    for task, index in chosen.items():
        category = task.removeprefix("desc_")
        logits = torch.full((descriptor_tasks.num_outputs(category),), -3.0)
        logits[index] = 3.0
        outputs[f"pred_{task}"] = logits
    outputs["pred_desc_foci"] = torch.tensor([3.0 if on else -3.0 for on in foci])
    return outputs


def samples():
    # solid (3) + hypo (2) + wider (0) + smooth (0) + no foci = 2 + 2 = 4 points -> TR4 (class 3)
    tr4 = descriptor_logits(3, 2, 0, 0, [False] * 4)
    # cystic (0) + anechoic (0) + wider + smooth = 0 points -> TR1 (class 0)
    tr1 = descriptor_logits(0, 0, 0, 0, [False] * 4)
    return [
        {"pred": logits_of(mask(2, 2)), "label": mask(2, 2), "label_true": mask(2, 3),
         "spacing": torch.tensor([0.5, 0.5]), "pred_cls": torch.tensor([0.0, 0, 0, 3, 0]),
         "label_cls": torch.tensor(3), "label_cls_true": torch.tensor(3),
         "label_desc_composition": torch.tensor(3), **tr4},
        {"pred": logits_of(mask(4, 4)), "label": mask(5, 4), "label_true": mask(5, 4),
         "spacing": torch.tensor([float("nan")] * 2), "pred_cls": torch.tensor([2.0, 0, 0, 0, 0]),
         "label_cls": torch.tensor(1), "label_cls_true": torch.tensor(0),
         "label_desc_composition": torch.tensor(-1), **tr1},
    ]  # fmt: skip


def test_scores_of_every_task_against_readers_and_truth():
    metric = MultitaskScores(prefix="val_")
    metric.reset()
    metric.update(samples())
    result = metric.compute()
    p = [m[0].numpy() > 0.5 for m in (mask(2, 2), mask(4, 4))]
    readers = [m[0].numpy() > 0.5 for m in (mask(2, 2), mask(5, 4))]
    truth = [m[0].numpy() > 0.5 for m in (mask(2, 3), mask(5, 4))]
    assert result["val_mean_dice"] == pytest.approx(
        np.mean([s.dice(a, b) for a, b in zip(p, readers, strict=False)])
    )
    assert result["val_mean_dice_truth"] == pytest.approx(
        np.mean([s.dice(a, b) for a, b in zip(p, truth, strict=False)])
    )
    assert result["val_mean_iou"] == pytest.approx(
        np.mean([s.iou(a, b) for a, b in zip(p, readers, strict=False)])
    )
    # only the first sample has a known spacing
    assert result["val_hd95_mm_truth"] == pytest.approx(s.hausdorff_95(p[0], truth[0], (0.5, 0.5)))
    assert result["val_hd95_px"] == pytest.approx(
        np.mean([s.hausdorff_95(a, b) for a, b in zip(p, readers, strict=False)])
    )
    assert result["val_accuracy"] == 0.5  # predicted 3 and 0, readers said 3 and 1
    assert result["val_accuracy_truth"] == 1.0  # the truth is 3 and 0
    assert result["val_accuracy_from_descriptors_truth"] == 1.0  # TR4 and TR1
    assert result["val_level_agreement"] == 1.0
    assert result["val_desc_composition_accuracy"] == 1.0  # the second label is unknown
    assert not any(math.isnan(v) for k, v in result.items() if "auc" not in k and "qwk" not in k)
    table = metric.report["level"]
    assert table["confusion_matrix"][1][0] == 1
    assert table["confusion_matrix"][3][3] == 1
    row = next(r for r in metric.report["side_by_side"] if r["score"] == "accuracy")
    assert row == {"score": "accuracy", "readers": 0.5, "truth": 1.0}


def test_the_registered_name_must_be_one_of_the_scores_and_the_report_is_written(tmp_path):
    metric = MultitaskScores(prefix="val_")
    engine = Engine(lambda engine, batch: batch)
    metric.attach(engine, "val_mean_dice")
    EvaluationReportSaver(metric, tmp_path, name="validation").attach(engine)
    engine.run([samples()], max_epochs=1)
    assert engine.state.metrics["val_mean_dice"] == pytest.approx(
        metric.report["metrics"]["val_mean_dice"]
    )
    report = json.loads((tmp_path / "validation.json").read_text())
    assert report["metrics"]["val_accuracy"] == 0.5
    markdown = (tmp_path / "validation.md").read_text()
    assert "| accuracy | 0.500 | 1.000 |" in markdown
    assert "Confusion matrix" in markdown
    wrong = Engine(lambda engine, batch: batch)
    MultitaskScores().attach(wrong, "val_dice")
    with pytest.raises(KeyError, match=r"val_dice.*val_mean_dice"):
        wrong.run([samples()], max_epochs=1)


def test_soft_level_targets_are_scored_by_their_most_likely_class():
    metric = MultitaskScores(prefix="", grouping="binary")
    metric.update([{"pred_cls": torch.tensor([0.0, 2.0]), "label_cls": torch.tensor([0.2, 0.8])}])
    assert metric.compute()["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"3 classes.*'binary' has 2"):
        metric.update([{"pred_cls": torch.zeros(3), "label_cls": torch.tensor(0)}])
