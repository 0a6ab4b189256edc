"""Ignite metrics fed from the evaluator's output: the clinical scores of every task.

:class:`MultitaskScores` collects, over one evaluation, what each sample needs (per-sample mask
scores, level probabilities, descriptor predictions) and computes every score at once, against
the readers' targets (``label``, ``label_cls``) and, where the batch has them, against the
phantom's truth (``label_true``, ``label_cls_true``) side by side. Its scalars go into
``engine.state.metrics`` (so MONAI's handlers and MLflow log them); the tables (confusion
matrices, per-class scores, the side-by-side comparison) stay in :attr:`MultitaskScores.report`
for :class:`~thyroid_monai.engine.reports.EvaluationReportSaver`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ignite.engine import Engine
from ignite.metrics import Metric
from monai.handlers import from_engine
from monai.utils.enums import CommonKeys as Keys

from thyroid_monai import descriptor_tasks, keys
from thyroid_monai.engine import scores
from thyroid_monai.engine.evaluator import label_key, pred_key
from thyroid_monai.tirads import Scheme, get_grouping

if TYPE_CHECKING:
    from thyroid_monai.tasks import TaskSet

TRUTH_SUFFIX = "_truth"
MASK_SCORES = ("mean_dice", "mean_iou", "hd95_mm", "hd95_px")
LEVEL_SCORES = ("accuracy", "balanced_accuracy", "macro_f1", "qwk", "auc", "ece")


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
        if score not in scores.SCORES:
            raise ValueError(f"unknown score {score!r}; available: {', '.join(scores.SCORES)}")
        self.score = scores.SCORES[score]
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


def _array(value: Any) -> np.ndarray:
    return torch.as_tensor(value).detach().float().cpu().numpy()


def _foreground(mask: Any) -> np.ndarray:
    """Nodule pixels of a mask given as one channel (index or probability) or as C channels."""
    array = _array(mask)
    if array.shape[0] == 1:
        return array[0] > 0.5
    return array.argmax(axis=0) > 0


def _class_label(value: Any) -> int:
    """Class index of a target given as an index or a distribution (``-1`` when unknown)."""
    array = _array(value).reshape(-1)
    if array.size == 1:
        return int(array[0])
    return -1 if np.isnan(array).any() else int(array.argmax())


def _softmax(logits: Any) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits).detach().float().cpu().view(-1), dim=0).numpy()


class MultitaskScores(Metric):
    """Every clinical score of the multitask model over one evaluation.

    Scores (each prefixed with ``prefix``, and repeated with the suffix ``_truth`` against the
    phantom's truth when the samples carry it):

    * mask: ``mean_dice``, ``mean_iou``, ``hd95_mm`` (over samples whose spacing is known),
      ``hd95_px`` (every sample, in pixels);
    * both: ``joint``, the mean of ``mean_dice`` and ``macro_f1`` (a checkpoint-selection score);
    * level: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``qwk`` (quadratic-weighted kappa),
      ``auc`` (one-vs-rest, macro), ``ece`` (expected calibration error);
    * structured report (with descriptor heads): the level read as the ACR sum of the predicted
      descriptor points, ``accuracy_from_descriptors`` and ``macro_f1_from_descriptors``,
      ``level_agreement`` (share of samples where both readings give the same class), and per
      category ``desc_<category>_accuracy`` (for foci: ``desc_foci_accuracy`` over every focus
      type of every sample, and ``desc_foci_macro_f1``, the mean F1 over the focus types present
      in the labels; a focus is predicted where its logit is positive).

    Definitions and edge cases are those of :mod:`thyroid_monai.engine.scores`. Register the
    metric under the name of one of its scores (``val_mean_dice``): MONAI then uses that score as
    the key metric, and a name it does not produce is an error.

    Args:
        prefix: Prepended to every score name.
        grouping: Label grouping of the level classes (for class names and for mapping the
            descriptor-derived ACR level to a class).
        scheme: TI-RADS scheme of the grouping (descriptor-derived levels need ``"acr"``).
        ece_bins: Bins of the expected calibration error.
        hd_percentile: Percentile of the Hausdorff distance.
        output_transform: Maps the engine output to the list of per-sample dictionaries.
    """

    def __init__(
        self,
        prefix: str = "val_",
        grouping: str = "acr5",
        scheme: Scheme = "acr",
        ece_bins: int = 15,
        hd_percentile: float = 95.0,
        output_transform: Callable[[Any], Any] = lambda output: output,
    ):
        self.prefix = prefix
        self.grouping = get_grouping(grouping, scheme)
        self.ece_bins = ece_bins
        self.hd_percentile = hd_percentile
        self.report: dict[str, Any] = {}
        self._mask: dict[str, list[dict[str, float]]] = defaultdict(list)
        self._probabilities: list[np.ndarray] = []
        self._levels: dict[str, list[int]] = defaultdict(list)
        self._descriptors: dict[str, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        self._derived: list[int] = []
        super().__init__(output_transform, skip_unrolling=True, metrics_result_mode="flatten")

    required_output_keys = None

    def reset(self) -> None:
        """Forgets the collected samples."""
        self._mask = defaultdict(list)
        self._probabilities = []
        self._levels = defaultdict(list)
        self._descriptors = defaultdict(list)
        self._derived = []

    def update(self, output: Sequence[Mapping[str, Any]]) -> None:
        """Adds the decollated samples of one batch."""
        for sample in output:
            self._update_mask(sample)
            self._update_level(sample)
            self._update_descriptors(sample)

    def _update_mask(self, sample: Mapping[str, Any]) -> None:
        if sample.get(Keys.PRED) is None:
            return
        prediction = _foreground(sample[Keys.PRED])
        spacing = sample.get(keys.SPACING)
        spacing_mm = [float("nan")] if spacing is None else _array(spacing).reshape(-1).tolist()
        known_spacing = bool(np.isfinite(spacing_mm).all())
        for reference, suffix in ((Keys.LABEL, ""), (keys.LABEL_TRUE, TRUTH_SUFFIX)):
            if sample.get(reference) is None:
                continue
            reference_mask = _array(sample[reference])
            if np.isnan(reference_mask).any():
                continue  # an unknown mask (a NaN placeholder)
            target = _foreground(reference_mask)
            row = {
                "mean_dice": scores.dice(prediction, target),
                "mean_iou": scores.iou(prediction, target),
                "hd95_px": scores.hausdorff_95(prediction, target, None, self.hd_percentile),
            }
            if known_spacing:
                row["hd95_mm"] = scores.hausdorff_95(
                    prediction, target, spacing_mm, self.hd_percentile
                )
            self._mask[suffix].append(row)

    def _update_level(self, sample: Mapping[str, Any]) -> None:
        if sample.get(keys.PRED_CLS) is None:
            return
        probabilities = _softmax(sample[keys.PRED_CLS])
        if probabilities.size != self.grouping.num_classes:
            raise ValueError(
                f"level predictions have {probabilities.size} classes, the label grouping "
                f"{self.grouping.name!r} has {self.grouping.num_classes}"
            )
        self._probabilities.append(probabilities)
        for reference, suffix in ((keys.LABEL_CLS, ""), (keys.LABEL_CLS_TRUE, TRUTH_SUFFIX)):
            value = sample.get(reference)
            self._levels[suffix].append(-1 if value is None else _class_label(value))

    def _update_descriptors(self, sample: Mapping[str, Any]) -> None:
        predictions = {
            task: sample[pred_key(task)]
            for task in descriptor_tasks.DESCRIPTOR_TASKS
            if sample.get(pred_key(task)) is not None
        }
        if len(predictions) != len(descriptor_tasks.DESCRIPTOR_TASKS):
            return
        indices = {}
        for task, logits in predictions.items():
            target = sample.get(label_key(task))
            if task == descriptor_tasks.FOCI_TASK:
                predicted = _array(logits).reshape(-1) > 0.0
                wanted = np.full(predicted.shape, np.nan) if target is None else _array(target)
                self._descriptors[task].append((predicted.astype(float), wanted.reshape(-1)))
            else:
                indices[task] = int(_array(logits).argmax())
                wanted_class = -1 if target is None else _class_label(target)
                self._descriptors[task].append(
                    (np.asarray(indices[task]), np.asarray(wanted_class))
                )
        foci = _array(predictions[descriptor_tasks.FOCI_TASK]).reshape(-1) > 0.0
        level = descriptor_tasks.level_from_descriptor_indices(indices, foci)
        self._derived.append(self.grouping.index(level))

    def _level_scores(self, suffix: str) -> dict[str, float]:
        labels = np.asarray(self._levels[suffix], dtype=np.int64)
        known = labels >= 0
        if not known.any():
            return {}
        probabilities = np.stack(self._probabilities)[known]
        labels = labels[known]
        result = {
            f"{name}{suffix}": scores.SCORES[name](labels, probabilities)
            for name in LEVEL_SCORES
            if name != "ece"
        }
        result[f"ece{suffix}"] = scores.expected_calibration_error(
            labels, probabilities, self.ece_bins
        )
        if self._derived:
            derived = np.eye(self.grouping.num_classes)[np.asarray(self._derived)[known]]
            result[f"accuracy_from_descriptors{suffix}"] = scores.accuracy(labels, derived)
            result[f"macro_f1_from_descriptors{suffix}"] = scores.macro_f1(labels, derived)
        classes = list(self.grouping.class_names)
        self.report["level" + suffix] = {
            "class_names": classes,
            "confusion_matrix": scores.confusion_matrix(
                labels, probabilities.argmax(axis=1), len(classes)
            ).tolist(),
            "per_class": scores.per_class_table(labels, probabilities, classes),
        }
        return result

    def _descriptor_scores(self) -> dict[str, float]:
        result: dict[str, float] = {}
        if self._derived and self._probabilities:
            direct = np.stack(self._probabilities).argmax(axis=1)
            result["level_agreement"] = float(np.mean(direct == np.asarray(self._derived)))
        for task, pairs in self._descriptors.items():
            predicted = np.stack([p for p, _ in pairs])
            wanted = np.stack([w for _, w in pairs]).astype(float)
            if task == descriptor_tasks.FOCI_TASK:
                known = ~np.isnan(wanted).any(axis=1)
                if known.any():
                    p, w = predicted[known].astype(bool), wanted[known].astype(bool)
                    result[f"{task}_accuracy"] = float(np.mean(p == w))
                    f1 = [scores.dice(p[:, j], w[:, j]) for j in range(w.shape[1]) if w[:, j].any()]
                    result[f"{task}_macro_f1"] = float(np.mean(f1)) if f1 else float("nan")
            else:
                known = wanted >= 0
                if known.any():
                    result[f"{task}_accuracy"] = float(np.mean(predicted[known] == wanted[known]))
        return result

    def compute(self) -> dict[str, float]:
        """Every score of the collected samples (prefixed), and :attr:`report` with the tables."""
        self.report = {}
        result: dict[str, float] = {}
        for suffix, rows in self._mask.items():
            for name in MASK_SCORES:
                values = [row[name] for row in rows if name in row]
                if values:
                    result[f"{name}{suffix}"] = float(np.mean(values))
        if self._probabilities:
            for suffix in ("", TRUTH_SUFFIX):
                result.update(self._level_scores(suffix))
        result.update(self._descriptor_scores())
        for suffix in ("", TRUTH_SUFFIX):
            # one number for checkpoint selection when both tasks matter (TaskSet selection joint)
            dice, f1 = result.get(f"mean_dice{suffix}"), result.get(f"macro_f1{suffix}")
            if dice is not None and f1 is not None:
                result[f"joint{suffix}"] = (dice + f1) / 2
        if not result:
            raise RuntimeError("MultitaskScores collected no prediction with a target")
        prefixed = {f"{self.prefix}{name}": value for name, value in result.items()}
        self.report["metrics"] = prefixed
        self.report["side_by_side"] = [
            {
                "score": name,
                "readers": value,
                "truth": result.get(f"{name}{TRUTH_SUFFIX}"),
            }
            for name, value in result.items()
            if not name.endswith(TRUTH_SUFFIX)
        ]
        self.report["samples"] = {
            "masks": len(self._mask.get("", [])),
            "levels": len(self._probabilities),
        }
        return prefixed

    def completed(self, engine: Engine, name: str) -> None:
        """Puts the scores into ``engine.state.metrics``; ``name`` must be one of them."""
        result = self.compute()
        if name not in result:
            raise KeyError(
                f"MultitaskScores was registered as {name!r}, which this evaluation does not "
                f"produce; use one of: {', '.join(sorted(result))}"
            )
        engine.state.metrics.update(result)


def key_metric(tasks: TaskSet, scores: MultitaskScores) -> dict[str, MultitaskScores]:
    """The evaluator's ``key_val_metric``: the scores under the task set's selection metric."""
    return {tasks.selection_metric: scores}
