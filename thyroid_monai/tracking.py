"""MLflow helpers that MONAI's handlers do not cover: the merged config as params, and figures.

* :func:`config_params` turns the merged bundle config (the file MONAI writes for
  ``save_execute_config``) into MLflow params: one per leaf, keys and values made valid for any
  MLflow server, expressions recorded as their values where that is cheap.
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

import copy
import logging
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import ID_SEP_KEY
from monai.utils.enums import CommonKeys as Keys

from thyroid_monai import keys
from thyroid_monai.engine.metrics import MultitaskScores
from thyroid_monai.io.files import atomic_path
from thyroid_monai.mtl.diagnostics import CONFLICT, COSINE_PREFIX, NORM_PREFIX, WEIGHT_PREFIX
from thyroid_monai.tirads import Scheme, get_grouping

logger = logging.getLogger(__name__)

# (panel title, metric-name prefix after the epoch prefix, y-axis scale)
PANELS: tuple[tuple[str, str, str], ...] = (
    ("cosine between task gradients", COSINE_PREFIX, "linear"),
    ("gradient norm", NORM_PREFIX, "log"),
    ("effective task weight", WEIGHT_PREFIX, "linear"),
    ("share of conflicting steps", CONFLICT, "linear"),
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
            for name, values in sorted(series.items()):
                epochs = sorted(values)
                label = name.removeprefix(prefix) or name
                axis.plot(epochs, [values[e] for e in epochs], marker="o", label=label)
            if not series:
                axis.text(0.5, 0.5, "not measured", ha="center", va="center",
                          transform=axis.transAxes)  # fmt: skip
            elif scale == "log" and all(v > 0 for s in series.values() for v in s.values()):
                axis.set_yscale("log")
            if prefix == COSINE_PREFIX:
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


# --- the merged config as MLflow params --------------------------------------------------------

PARAM_VALUE_LIMIT = 500
"""Longest param value logged. MLflow 3 accepts 6000 characters, servers before MLflow 2.3 only
500; the shorter limit keeps every server working, and the full text is in the config artifact."""
PARAM_KEY_LIMIT = 250
"""Longest param key MLflow accepts."""
TRUNCATION_MARK = "..."
_INVALID_KEY_CHARACTERS = re.compile(r"[^\w./ -]")
# The bundle's own control flow, not settings of the run.
DEFAULT_PARAM_EXCLUDE = ("imports", "initialize", "run", "finalize")


def _is_component(value: Any) -> bool:
    return isinstance(value, dict) and "_target_" in value


def _leaves(config: Any, config_id: str) -> Iterator[tuple[str, Any]]:
    """``(config id, value)`` of every leaf; a list of plain values and an empty dict are one."""
    if isinstance(config, dict) and (config or not config_id):
        for key, value in config.items():
            yield from _leaves(value, f"{config_id}{ID_SEP_KEY}{key}" if config_id else str(key))
    elif isinstance(config, list) and any(isinstance(v, dict | list) for v in config):
        for index, value in enumerate(config):
            yield from _leaves(value, f"{config_id}{ID_SEP_KEY}{index}")
    else:
        yield config_id, config


def param_key(config_id: str, separator: str = ".") -> str:
    """An MLflow param key for a config id (``train::dataset::cache_rate`` -> ``train.dataset...``).

    Characters MLflow refuses in keys on some platforms (``:``, ``#``, ``$``...) become ``_``;
    a key longer than MLflow's limit keeps its end and gets a hash of the whole id, so keys stay
    unique.
    """
    key = separator.join(ReferenceResolver.split_id(config_id))
    key = _INVALID_KEY_CHARACTERS.sub("_", key)
    if len(key) > PARAM_KEY_LIMIT:
        import hashlib

        digest = hashlib.sha1(config_id.encode()).hexdigest()[:10]
        key = f"{digest}~{key[-(PARAM_KEY_LIMIT - len(digest) - 1) :]}"
    return key


def param_value(value: Any, limit: int = PARAM_VALUE_LIMIT) -> str:
    """The text MLflow stores, cut to ``limit``: ``str(value)``, as MONAI's handler logs params."""
    text = _text(value)
    if len(text) > limit:
        text = text[: limit - len(TRUNCATION_MARK)] + TRUNCATION_MARK
    return text


def _text(value: Any) -> str:
    return str(value)


def _is_plain(value: Any) -> bool:
    """Whether a resolved value reads well as a param (numbers, text, and lists/dicts of them)."""
    if value is None or isinstance(value, bool | int | float | str | torch.device):
        return True
    if isinstance(value, list | tuple):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


class _CheapResolver:
    """Resolves config leaves whose references lead to no component (nothing is instantiated)."""

    def __init__(self, config: Mapping[str, Any]):
        self.parser = ConfigParser(copy.deepcopy(dict(config)))  # it expands macros in place
        self.parser.resolve_macro_and_relative_ids()
        if self.parser.get("imports") is not None:
            self.parser.get_parsed_content("imports")
        self._cheap: dict[str, bool] = {}

    def is_cheap(self, config_id: str) -> bool:
        """Whether ``config_id`` and everything it refers to is free of components."""
        if config_id not in self._cheap:
            self._cheap[config_id] = False  # a reference cycle is not cheap
            self._cheap[config_id] = self._check(self.parser.get(config_id))
        return self._cheap[config_id]

    def _check(self, value: Any) -> bool:
        if _is_component(value):
            return False
        if isinstance(value, dict):
            return all(self._check(v) for v in value.values())
        if isinstance(value, list):
            return all(self._check(v) for v in value)
        if isinstance(value, str):
            refs = ReferenceResolver.match_refs_pattern(value)
            return all(ref in self.parser and self.is_cheap(ref) for ref in refs)
        return True

    def resolve(self, config_id: str, limit: int) -> tuple[bool, Any]:
        """``(True, value)`` for a cheap leaf whose value is plain and fits ``limit``.

        Anything else gives ``(False, None)``: the caller records the text instead.
        """
        if not self.is_cheap(config_id):
            return False, None
        try:
            value = self.parser.get_parsed_content(config_id)
        except Exception as error:  # e.g. a file that only the training machine has
            logger.debug("config param %s kept as text: %s", config_id, error)
            return False, None
        if not _is_plain(value) or len(_text(value)) > limit:
            return False, None
        return True, value


def config_params(
    config_file: str | Path | None,
    *,
    exclude: Iterable[str] = DEFAULT_PARAM_EXCLUDE,
    resolve: bool = True,
    value_limit: int = PARAM_VALUE_LIMIT,
    separator: str = ".",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """The merged bundle config as MLflow params, one per leaf.

    A value that is a reference (``@id``) or an expression (``$...``) is recorded as what it
    evaluates to when that is cheap: its references lead to no component (nothing would be
    instantiated), it evaluates without error, and the result is plain (numbers, text, lists of
    them) and fits ``value_limit``. Otherwise the expression's text is recorded, so
    ``network: @network_def`` stays ``@network_def``. Macros (``%id``) stay as text.

    Args:
        config_file: The merged config (JSON or YAML) that MONAI writes for
            ``save_execute_config``; ``None`` (not saved) gives only ``extra``.
        exclude: Top-level ids left out.
        resolve: Evaluate cheap references and expressions (else record every text as it is).
        value_limit: Longest value; longer ones are cut and end with ``...``.
        separator: Joins the levels of a config id into a param key.
        extra: Params added as they are (after the config's, winning on equal keys), e.g. the
            bundle's ``tracking_params`` with their resolved values.

    Returns:
        ``{key: value}``, every key valid for MLflow and unique.

    Raises:
        FileNotFoundError: If ``config_file`` does not exist.
        ValueError: If two config ids map to the same key.
    """
    config = {}
    if config_file is not None:
        if not Path(config_file).is_file():
            raise FileNotFoundError(f"merged config not found: {config_file}")
        config = ConfigParser.load_config_file(config_file)
    excluded = set(exclude)
    kept = {k: v for k, v in config.items() if k not in excluded}
    resolver = _CheapResolver(config) if resolve and config else None
    params: dict[str, str] = {}
    origin: dict[str, str] = {}
    for config_id, value in _leaves(kept, ""):
        key = param_key(config_id, separator)
        if key in origin:
            raise ValueError(f"config ids {origin[key]!r} and {config_id!r} both map to {key!r}")
        origin[key] = config_id
        is_text_to_resolve = isinstance(value, str) and value[:1] in ("@", "$")
        if resolver is not None and is_text_to_resolve:
            resolved, resolved_value = resolver.resolve(config_id, value_limit)
            value = resolved_value if resolved else value
        params[key] = param_value(value, value_limit)
    for key, value in (extra or {}).items():
        params[param_key(str(key), separator)] = param_value(value, value_limit)
    return params


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
