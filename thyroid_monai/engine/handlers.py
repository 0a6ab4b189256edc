"""Handlers the bundle cannot express declaratively: checkpoints that resume, evaluation reports."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Compose, Randomizable

from thyroid_monai.engine.metrics import MultitaskScores
from thyroid_monai.io.checkpoints import save_checkpoint_atomic
from thyroid_monai.io.files import atomic_path, write_json_atomic
from thyroid_monai.mtl.distributed import average_buffers


class BufferAveraging:
    """Averages the network's buffers over the ranks at every epoch end (data-parallel runs).

    Under DDP the multitask step keeps BatchNorm running statistics local to each rank (see
    :func:`~thyroid_monai.mtl.distributed.average_buffers`); averaging them before validation and
    checkpointing makes every rank validate and hold the same model. Attach it before the
    validation and checkpoint handlers (``configs/multi_gpu_train.yaml`` puts it first). Outside
    a process group it does nothing.

    Args:
        network: The trained network (DDP-wrapped or not).
    """

    def __init__(self, network: torch.nn.Module):
        self.network = network

    def attach(self, engine: Engine) -> None:
        """Registers the averaging at ``EPOCH_COMPLETED``."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        average_buffers(self.network)


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler whose files are never half-written and never missing.

    ignite's ``Checkpoint`` removes the file it replaces *before* writing the new one, and MONAI's
    disk saver writes in place, so a kill at the wrong moment leaves no checkpoint or a truncated
    one. Here each file is written atomically (:func:`save_checkpoint_atomic`) and removals are
    deferred until the next file is in place.

    Args:
        dirname: Output folder (created).
        filename: A fixed file name for every save (``model.pt``), as MONAI's saver allows.
        save_on_rank: The only process that writes in a distributed run.
    """

    def __init__(self, dirname: str | Path, filename: str | None = None, save_on_rank: int = 0):
        self.dirname = Path(dirname)
        self.filename = filename
        self.save_on_rank = save_on_rank
        self._pending_removals: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        """Writes ``checkpoint`` atomically, then removes the files it replaces."""
        if idist.get_rank() != self.save_on_rank:
            return
        name = self.filename or filename
        save_checkpoint_atomic(checkpoint, self.dirname / name)
        for old in self._pending_removals:
            if old != name:
                (self.dirname / old).unlink(missing_ok=True)
        self._pending_removals = []

    def remove(self, filename: str) -> None:
        """Marks a file for removal once the next one has been written."""
        self._pending_removals.append(self.filename or filename)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with atomic writes and a checkpointable best-score memory.

    Files are written by :class:`AtomicDiskSaver`. ``state_dict``/``load_state_dict`` carry the
    key-metric checkpoint's memory (the best score so far and its file), so a resumed training
    replaces ``model.pt`` only with a better model than the one saved before the interruption.

    Args:
        **kwargs: Arguments of ``monai.handlers.CheckpointSaver``.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        fixed_names = (
            (self._final_checkpoint, self._final_filename),
            (self._key_metric_checkpoint, kwargs.get("key_metric_filename")),
            (self._interval_checkpoint, None),
        )
        for checkpoint, fixed_name in fixed_names:
            if checkpoint is not None:
                # ignite types the attribute as the saver it was built with; any save handler works
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, fixed_name)  # type: ignore[assignment]

    def state_dict(self) -> dict[str, Any]:
        """The key-metric memory (empty without ``save_key_metric``)."""
        if self._key_metric_checkpoint is None:
            return {}
        return dict(self._key_metric_checkpoint.state_dict())

    def load_state_dict(self, state_dict: dict) -> None:
        """Restores the key-metric memory saved by :meth:`state_dict`."""
        if state_dict:
            super().load_state_dict(state_dict)


class TrainingCheckpointSaver(AtomicCheckpointSaver):
    """``CheckpointSaver`` that also stores the state of the engine it is attached to.

    A config cannot hand a trainer its own reference (``train#trainer`` inside
    ``train#handlers`` is circular), so the engine is added to the saved objects under ``key``
    when the handler is attached. Together with model, optimiser, scheduler and
    :class:`RandomStates` this is what resuming needs: epoch, iteration and the states of
    everything that changes during training. Files are written atomically and the previous one
    is removed only after the new one is complete (:class:`AtomicCheckpointSaver`), so a kill
    during a save leaves the last complete checkpoint in place.

    Args:
        key: Name of the engine's entry in the checkpoint.
        **kwargs: Arguments of ``monai.handlers.CheckpointSaver`` (``save_dir``, ``save_dict``,
            ``save_interval``, ``n_saved``, ``file_prefix``...).
    """

    def __init__(self, key: str = "trainer", **kwargs: Any):
        super().__init__(**kwargs)
        self.engine_key = key
        self._attached = False

    def attach(self, engine: Engine) -> None:
        """Adds ``engine`` to the saved objects; attaches the saves when the run starts.

        Attaching at ``STARTED``, after every other handler was attached, makes the save the last
        thing done at the end of an epoch: the epoch's metrics are tracked and its figures drawn
        before its checkpoint exists, so a run killed in between and resumed from that checkpoint
        has lost no record. (Handlers run in the order they were attached; the tracking handlers
        are appended to the bundle's list after this one.)
        """
        # ignite's Checkpoint keeps a reference to this same dictionary, so the entry added here
        # is saved from the first checkpoint on.
        self.save_dict[self.engine_key] = engine
        engine.add_event_handler(Events.STARTED, self._attach_last)

    def _attach_last(self, engine: Engine) -> None:
        if not self._attached:
            super().attach(engine)
            self._attached = True


class TrainingCheckpointLoader(CheckpointLoader):
    """``CheckpointLoader`` that also restores the state of the engine it is attached to.

    The counterpart of :class:`TrainingCheckpointSaver`: the engine (epoch, iteration) is added to
    the loaded objects under ``key`` at attach time, so training continues after the saved epoch
    until the engine's ``max_epochs``.

    Args:
        key: Name of the engine's entry in the checkpoint.
        **kwargs: Arguments of ``monai.handlers.CheckpointLoader`` (``load_path``,
            ``load_dict``...).
    """

    def __init__(self, key: str = "trainer", **kwargs: Any):
        super().__init__(**kwargs)
        self.engine_key = key

    def attach(self, engine: Engine) -> None:
        """Adds ``engine`` to the loaded objects, then attaches as ``CheckpointLoader`` does."""
        if not Path(self.load_path).is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {self.load_path}")
        self.load_dict[self.engine_key] = engine
        super().attach(engine)


def _randomizable(transforms: Any) -> list[Randomizable]:
    """Every ``Randomizable`` inside a transform, a ``Compose`` or a list of them, nested ones too.

    Dictionary transforms draw from the generators of the array transforms they wrap
    (``RandAffined`` -> ``RandAffine`` -> ``RandAffineGrid``), so those are found among the
    attributes of each random transform. The order is that of the pipeline and the attributes,
    the same in the run that saves and the run that resumes.
    """
    found: list[Randomizable] = []
    seen: set[int] = set()
    pending = list(transforms) if isinstance(transforms, Iterable) else [transforms]
    while pending:
        transform = pending.pop(0)
        if id(transform) in seen:
            continue
        seen.add(id(transform))
        nested: list[Any] = []
        if isinstance(transform, Compose):
            nested += list(transform.transforms)
        if isinstance(transform, Randomizable):
            found.append(transform)
            nested += [
                value
                for value in getattr(transform, "__dict__", {}).values()
                if isinstance(value, Randomizable)
            ]
        pending = nested + pending
    return found


class RandomStates:
    """The random states a resumed training needs, as a checkpointable object.

    Python's, NumPy's and torch's global generators (CUDA's too when present: dropout, data order,
    initialisation) and the generator of every random transform of the given pipelines
    (augmentation, reader sampling). ``state_dict`` holds only tensors, numbers and lists, so the
    checkpoint loads with ``torch.load(weights_only=True)``.

    Args:
        transforms: Transform pipelines (``Compose`` or lists) whose random transforms to track.
    """

    def __init__(self, transforms: Any = ()):
        self.transforms = _randomizable(transforms)

    def state_dict(self) -> dict[str, Any]:
        """The current states."""
        version, mt_state, gauss = random.getstate()
        numpy_state = np.random.get_state()  # noqa: NPY002 - the legacy global generator is used by libraries
        return {
            "python": [version, list(mt_state), gauss],
            "numpy": _numpy_state(numpy_state),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state(t.R.get_state()) for t in self.transforms],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restores saved states.

        Raises:
            ValueError: If the checkpoint tracked a different number of random transforms.
        """
        version, mt_state, gauss = state["python"]
        random.setstate((version, tuple(int(x) for x in mt_state), gauss))
        np.random.set_state(_numpy_state_back(state["numpy"]))  # noqa: NPY002
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        saved = state["transforms"]
        if len(saved) != len(self.transforms):
            raise ValueError(
                f"the checkpoint holds {len(saved)} random transform states, the pipeline has "
                f"{len(self.transforms)}: resume with the same preprocessing"
            )
        for transform, transform_state in zip(self.transforms, saved, strict=True):
            transform.R.set_state(_numpy_state_back(transform_state))


def _numpy_state(state: Any) -> list:
    name, keys, position, has_gauss, cached = state
    return [name, torch.as_tensor(keys.astype(np.int64)), int(position), int(has_gauss), cached]


def _numpy_state_back(state: list) -> tuple:
    name, keys, position, has_gauss, cached = state
    return (name, keys.numpy().astype(np.uint32), position, has_gauss, cached)


class EvaluationReportSaver:
    """Writes the tables of a :class:`MultitaskScores` after every evaluation.

    ``<save_dir>/<name>.json`` holds the scores, the side-by-side comparison against the readers
    and the truth, the confusion matrices and the per-class tables; ``<name>.md`` shows them as
    Markdown tables. Both are written atomically.

    Args:
        scores: The metric instance the evaluator computes.
        save_dir: Output folder (created).
        name: File name without suffix.
    """

    def __init__(self, scores: MultitaskScores, save_dir: str | Path, name: str = "report"):
        self.scores = scores
        self.save_dir = Path(save_dir)
        self.name = name

    def attach(self, engine: Engine) -> None:
        """Writes after each evaluation epoch (the metrics are computed before this handler)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Writes the report of the evaluation that just finished."""
        report = self.scores.report
        if not report:
            raise RuntimeError("the scores hold no report: attach the metric to the evaluator")
        self.save_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.save_dir / f"{self.name}.json", report)
        with atomic_path(self.save_dir / f"{self.name}.md") as temporary:
            Path(temporary).write_text(markdown_report(report), encoding="utf-8")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def markdown_report(report: Mapping[str, Any]) -> str:
    """The side-by-side scores, confusion matrices and per-class tables as Markdown."""
    lines = ["# Evaluation", "", "| score | readers | truth |", "|---|---|---|"]
    lines += [
        f"| {row['score']} | {_cell(row['readers'])} | {_cell(row['truth'])} |"
        for row in report.get("side_by_side", [])
    ]
    for key, title in (("level", "readers' labels"), ("level_truth", "truth")):
        level = report.get(key)
        if not level:
            continue
        names = level["class_names"]
        lines += ["", f"## Level against the {title}", "", "Confusion matrix (rows: true, columns:"
                  " predicted)", "", "| | " + " | ".join(names) + " |",
                  "|---" * (len(names) + 1) + "|"]  # fmt: skip
        lines += [
            f"| {name} | " + " | ".join(str(v) for v in row) + " |"
            for name, row in zip(names, level["confusion_matrix"], strict=True)
        ]
        lines += ["", "| class | support | precision | recall | F1 |", "|---|---|---|---|---|"]
        lines += [
            f"| {r['class']} | {r['support']} | {_cell(r['precision'])} | {_cell(r['recall'])} "
            f"| {_cell(r['f1'])} |"
            for r in level["per_class"]
        ]
    return "\n".join(lines) + "\n"


__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "EvaluationReportSaver",
    "RandomStates",
    "TrainingCheckpointLoader",
    "TrainingCheckpointSaver",
    "markdown_report",
]
