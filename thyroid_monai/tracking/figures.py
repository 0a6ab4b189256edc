"""Figures a tracked run logs: gradient diagnostics over training and the best evaluation.

* :class:`GradientDiagnosticsFigure` redraws the gradient-conflict curves (pairwise cosines,
  gradient norms, effective task weights, share of conflicting steps) from the trainer's epoch
  metrics at the end of every epoch.
* :class:`ConfusionMatrixFigure` and :class:`SampleOverlayFigure` draw the level confusion
  matrices and a grid of overlays (image, reference and predicted mask, reference and predicted
  level) of the best evaluation so far.

The bundle's tracking settings attach the figures and list the PNGs among the MLflow handler's
artifacts, which are logged when training completes.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.utils.enums import CommonKeys as Keys

from thyroid_monai import keys
from thyroid_monai.engine.metrics import MultitaskScores
from thyroid_monai.io.files import atomic_path
from thyroid_monai.mtl.alignment import ALIGNMENT_PREFIX
from thyroid_monai.mtl.diagnostics import CONFLICT, COSINE_PREFIX, NORM_PREFIX, WEIGHT_PREFIX
from thyroid_monai.tirads import Scheme, get_grouping

# (panel title, metric-name prefix after the epoch prefix, y-axis scale)
PANELS: tuple[tuple[str, str, str], ...] = (
    ("cosine between task gradients", COSINE_PREFIX, "linear"),
    ("gradient norm", NORM_PREFIX, "log"),
    ("effective task weight", WEIGHT_PREFIX, "linear"),
    ("share of conflicting steps", CONFLICT, "linear"),
    ("per-sample cosine at the latent (RLAR)", ALIGNMENT_PREFIX, "linear"),
)


class GradientDiagnosticsFigure:
    """Draws the per-epoch gradient diagnostics over training into one PNG.

    Args:
        path: Where the figure goes (rewritten atomically after every epoch).
        prefix: Prefix of the epoch metrics (``train_`` from ``EpochScalarMeans``).
        dpi: Resolution of the PNG.
    """

    def __init__(self, path: str | Path, prefix: str = "train_", dpi: int = 110):
        self.path = Path(path)
        self.prefix = prefix
        self.dpi = dpi
        self.history: dict[str, dict[int, float]] = {}

    def attach(self, engine: Engine) -> None:
        """Redraws at every epoch end."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Records this epoch's diagnostics and redraws the figure."""
        self.record(engine.state.epoch, engine.state.metrics)
        if self.history:
            self.draw()

    def record(self, epoch: int, metrics: Mapping[str, object]) -> None:
        """Keeps the diagnostics among ``metrics`` for ``epoch``."""
        for key, value in metrics.items():
            name = key.removeprefix(self.prefix)
            wanted = key.startswith(self.prefix) and self._panel(name) is not None
            if wanted and isinstance(value, int | float):
                self.history.setdefault(name, {})[epoch] = float(value)

    def _panel(self, name: str) -> int | None:
        for index, (_, prefix, _) in enumerate(PANELS):
            if name.startswith(prefix):
                return index
        return None

    def draw(self) -> Path:
        """Writes the figure; panels without data say so.

        Returns:
            The path of the PNG.
        """
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
        from matplotlib.ticker import MaxNLocator

        figure, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.4))
        for index, (title, prefix, scale) in enumerate(PANELS):
            axis = axes[index]
            series = {n: v for n, v in self.history.items() if self._panel(n) == index}
            if prefix == COSINE_PREFIX and len(series) == 2:  # one pair: its minimum is itself
                series.pop(f"{COSINE_PREFIX}min", None)
            if prefix == ALIGNMENT_PREFIX:
                _draw_alignment_bands(axis, series)
            else:
                for name, values in sorted(series.items()):
                    epochs = sorted(values)
                    label = name.removeprefix(prefix) or name
                    axis.plot(epochs, [values[e] for e in epochs], marker="o", label=label)
            if not series:
                axis.text(0.5, 0.5, "not measured", ha="center", va="center",
                          transform=axis.transAxes)  # fmt: skip
            elif scale == "log" and all(v > 0 for s in series.values() for v in s.values()):
                axis.set_yscale("log")
            if prefix in (COSINE_PREFIX, ALIGNMENT_PREFIX):
                axis.axhline(0.0, color="grey", linewidth=0.8)
            if prefix == CONFLICT:
                axis.set_ylim(-0.05, 1.05)
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_title(title)
            axis.set_xlabel("epoch")
            if len(series) > 1:
                axis.legend(fontsize="small")
        figure.tight_layout()
        with atomic_path(self.path) as temporary:
            figure.savefig(temporary, dpi=self.dpi)
        plt.close(figure)
        return self.path


def _draw_alignment_bands(axis: Any, series: Mapping[str, Mapping[int, float]]) -> None:
    """Per latent: the median cosine over epochs, between its 5-95% and 25-75% quantiles."""
    latents = sorted({name.removeprefix(ALIGNMENT_PREFIX).rsplit("_", 1)[0] for name in series})
    latents = [latent for latent in latents if f"{ALIGNMENT_PREFIX}{latent}_p50" in series]
    for latent in latents:
        name = f"{ALIGNMENT_PREFIX}{latent}_"
        median = series[f"{name}p50"]
        epochs = sorted(median)
        (line,) = axis.plot(epochs, [median[e] for e in epochs], marker="o", label=latent)
        for low, high, alpha in (("p05", "p95", 0.15), ("p25", "p75", 0.3)):
            lower, upper = series.get(f"{name}{low}", {}), series.get(f"{name}{high}", {})
            shared = [e for e in epochs if e in lower and e in upper]
            axis.fill_between(shared, [lower[e] for e in shared], [upper[e] for e in shared],
                              color=line.get_color(), alpha=alpha, linewidth=0)  # fmt: skip


# --- figures of an evaluation ------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def _is_best_evaluation(engine: Engine) -> bool:
    """Whether the evaluation that just ended set the best key metric so far (MONAI's state)."""
    state: Any = engine.state  # MONAI adds best_metric_epoch to ignite's State
    return bool(state.best_metric_epoch == state.epoch)


class ConfusionMatrixFigure:
    """Draws the level confusion matrices of an evaluation into one PNG.

    One panel against the readers' labels and, on data that has it (the phantom), one against the
    truth. By default only an evaluation that sets a new best key metric redraws, so the figure
    belongs to the same epoch as the best checkpoint.

    Args:
        scores: The evaluator's :class:`~thyroid_monai.engine.MultitaskScores` (its report holds
            the matrices).
        path: Where the PNG goes (written atomically).
        title: What the evaluation is (``validation``, ``test``).
        only_best: Redraw only on a new best key metric (else after every evaluation).
        dpi: Resolution of the PNG.
    """

    def __init__(
        self,
        scores: MultitaskScores,
        path: str | Path,
        title: str = "validation",
        only_best: bool = True,
        dpi: int = 110,
    ):
        self.scores = scores
        self.path = Path(path)
        self.title = title
        self.only_best = only_best
        self.dpi = dpi

    def attach(self, engine: Engine) -> None:
        """Draws after each evaluation (the scores are computed before this handler runs)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Draws the matrices of the evaluation that just ended (nothing without a level task)."""
        if self.only_best and not _is_best_evaluation(engine):
            return
        panels = {
            reference: self.scores.report[key]
            for key, reference in (("level", "readers' labels"), ("level_truth", "truth"))
            if key in self.scores.report
        }
        if panels:
            self.draw(panels, engine.state.epoch)

    def draw(self, panels: Mapping[str, Mapping[str, Any]], epoch: int) -> Path:
        """Writes one matrix per reference (``{reference: {"class_names", "confusion_matrix"}}``).

        Returns:
            The path of the PNG.
        """
        plt = _pyplot()
        figure, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 4.2), squeeze=False)
        for axis, (reference, level) in zip(axes[0], panels.items(), strict=True):
            names = list(level["class_names"])
            matrix = np.asarray(level["confusion_matrix"], dtype=np.int64)
            axis.imshow(matrix, cmap="Blues", vmin=0, vmax=max(int(matrix.max()), 1))
            for (row, column), count in np.ndenumerate(matrix):
                dark = count > matrix.max() / 2
                axis.text(column, row, str(count), ha="center", va="center",
                          color="white" if dark else "black")  # fmt: skip
            axis.set_xticks(range(len(names)), names)
            axis.set_yticks(range(len(names)), names)
            axis.set_xlabel("predicted level")
            axis.set_ylabel(f"level from the {reference}")
            accuracy = np.trace(matrix) / max(int(matrix.sum()), 1)
            axis.set_title(f"against the {reference} (accuracy {accuracy:.2f})", fontsize="medium")
        figure.suptitle(f"TI-RADS level, {self.title}, epoch {epoch}")
        figure.tight_layout()
        with atomic_path(self.path) as temporary:
            figure.savefig(temporary, dpi=self.dpi)
        plt.close(figure)
        return self.path


def _numpy(value: Any) -> np.ndarray:
    return torch.as_tensor(value).detach().float().cpu().numpy()


def _mask_rows_cols(mask: Any) -> np.ndarray | None:
    """A (rows, cols) foreground mask from a channel-first, x-first tensor (index, share or logits).

    One channel is a mask or a reader share (foreground above one half); several channels are
    class logits (foreground where a non-background class wins).
    """
    if mask is None:
        return None
    array = _numpy(mask)
    foreground = array[0] > 0.5 if array.shape[0] == 1 else array.argmax(axis=0) > 0
    return np.asarray(foreground.T)


def _class_index(value: Any) -> int | None:
    """A level target given as an index or a distribution (``None`` when unknown)."""
    if value is None:
        return None
    array = _numpy(value).reshape(-1)
    if array.size == 1:
        return int(array[0]) if array[0] >= 0 else None
    return None if np.isnan(array).any() else int(array.argmax())


class SampleOverlayFigure:
    """A grid of evaluation samples: image, reference and predicted mask and level.

    The first ``num_samples`` samples of the evaluation (the validation loader does not shuffle,
    so the grid shows the same images at every epoch) are kept from the evaluator's decollated
    output. The reference mask (the readers' consensus) is drawn green, the prediction red; each
    title gives the reference level, the truth level where the data has one, and the predicted
    level with its probability. Like :class:`ConfusionMatrixFigure`, by default only a new best
    evaluation redraws.

    Args:
        path: Where the PNG goes (written atomically).
        grouping: Label grouping of the level classes (for their names).
        scheme: TI-RADS scheme of the grouping.
        num_samples: How many samples the grid shows.
        columns: Samples per row of the grid.
        title: What the evaluation is (``validation``, ``test``).
        only_best: Redraw only on a new best key metric (else after every evaluation).
        dpi: Resolution of the PNG.
    """

    def __init__(
        self,
        path: str | Path,
        grouping: str = "acr5",
        scheme: Scheme = "acr",
        num_samples: int = 8,
        columns: int = 4,
        title: str = "validation",
        only_best: bool = True,
        dpi: int = 110,
    ):
        if num_samples < 1 or columns < 1:
            raise ValueError(f"num_samples ({num_samples}) and columns ({columns}) must be > 0")
        self.path = Path(path)
        self.class_names = get_grouping(grouping, scheme).class_names
        self.num_samples = num_samples
        self.columns = columns
        self.title = title
        self.only_best = only_best
        self.dpi = dpi
        self.samples: list[dict[str, Any]] = []

    def attach(self, engine: Engine) -> None:
        """Collects during each evaluation and draws at its end."""
        engine.add_event_handler(Events.EPOCH_STARTED, self.reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self.collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def reset(self, engine: Engine | None = None) -> None:
        """Forgets the samples of the previous evaluation."""
        self.samples = []

    def collect(self, engine: Engine) -> None:
        """Keeps the first samples of the evaluation (CPU copies of what the figure needs)."""
        output = engine.state.output
        samples: list[Mapping[str, Any]] = output if isinstance(output, list) else []
        for sample in samples:
            if len(self.samples) >= self.num_samples:
                return
            self.samples.append(self.sample(sample))

    def sample(self, output: Mapping[str, Any]) -> dict[str, Any]:
        """What the figure draws of one decollated evaluator output."""
        logits = output.get(keys.PRED_CLS)
        probabilities = None
        if logits is not None:
            probabilities = torch.softmax(torch.as_tensor(_numpy(logits)).view(-1), 0).numpy()
        return {
            "image": _numpy(output[Keys.IMAGE])[0].T,
            "reference": _mask_rows_cols(output.get(Keys.LABEL)),
            "prediction": _mask_rows_cols(output.get(Keys.PRED)),
            "level": _class_index(output.get(keys.LABEL_CLS)),
            "level_truth": _class_index(output.get(keys.LABEL_CLS_TRUE)),
            "probabilities": probabilities,
        }

    def __call__(self, engine: Engine) -> None:
        """Draws the samples of the evaluation that just ended."""
        if self.samples and (not self.only_best or _is_best_evaluation(engine)):
            self.draw(self.samples, engine.state.epoch)

    def _caption(self, sample: Mapping[str, Any]) -> str:
        lines = []
        if sample["level"] is not None:
            lines.append(f"reference {self.class_names[sample['level']]}")
        if sample["level_truth"] is not None:
            lines.append(f"truth {self.class_names[sample['level_truth']]}")
        probabilities = sample["probabilities"]
        if probabilities is not None:
            best = int(np.argmax(probabilities))
            lines.append(f"predicted {self.class_names[best]} ({probabilities[best]:.2f})")
        return "\n".join(lines)

    def draw(self, samples: Sequence[Mapping[str, Any]], epoch: int) -> Path:
        """Writes the grid.

        Returns:
            The path of the PNG.
        """
        plt = _pyplot()
        columns = min(self.columns, len(samples))
        rows = math.ceil(len(samples) / columns)
        figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.4 * rows),
                                    squeeze=False)  # fmt: skip
        for axis in axes.flat:
            axis.axis("off")
        for axis, sample in zip(axes.flat, samples, strict=False):
            axis.imshow(sample["image"], cmap="gray", vmin=0.0, vmax=1.0)
            for name, colour in (("reference", "lime"), ("prediction", "red")):
                mask = sample[name]
                if mask is not None and mask.any() and not mask.all():
                    axis.contour(mask.astype(float), levels=[0.5], colors=colour, linewidths=1.0)
            axis.set_title(self._caption(sample), fontsize="small")
        figure.suptitle(
            f"{self.title}, epoch {epoch}: reference mask green, predicted mask red",
            fontsize="medium",
        )
        figure.tight_layout()
        with atomic_path(self.path) as temporary:
            figure.savefig(temporary, dpi=self.dpi)
        plt.close(figure)
        return self.path
