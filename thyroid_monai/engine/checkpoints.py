"""Checkpoints that survive a kill and let a training resume where it stopped.

:class:`AtomicDiskSaver` writes every file atomically and removes the file it replaces only once
the new one is in place; :class:`AtomicCheckpointSaver` is MONAI's ``CheckpointSaver`` on top of
it, with a checkpointable best-score memory. :class:`TrainingCheckpointSaver` and
:class:`TrainingCheckpointLoader` also save and restore the engine they are attached to (epoch,
iteration), which a config cannot hand them itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointLoader, CheckpointSaver

from thyroid_monai.io.checkpoints import save_checkpoint_atomic


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
    :class:`~thyroid_monai.engine.random_states.RandomStates` this is what resuming needs: epoch,
    iteration and the states of everything that changes during training. Files are written
    atomically and the previous one is removed only after the new one is complete
    (:class:`AtomicCheckpointSaver`), so a kill during a save leaves the last complete checkpoint
    in place.

    Args:
        key: Name of the engine's entry in the checkpoint.
        **kwargs: Arguments of ``monai.handlers.CheckpointSaver`` (``save_dir``, ``save_dict``,
            ``save_interval``, ``n_saved``, ``file_prefix``...).
    """

    def __init__(self, key: str = "trainer", **kwargs: Any):
        # A copy: the bundle hands the same dictionary to the loader, which adds to it too.
        if "save_dict" in kwargs:
            kwargs["save_dict"] = dict(kwargs["save_dict"])
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
        load_path: The checkpoint to continue from; None: a fresh run, the handler does nothing
            (``resume_from: auto`` with no checkpoint yet).
        load_dict: The objects to restore (``model``, ``optimizer``...).
        key: Name of the engine's entry in the checkpoint.
        **kwargs: Further arguments of ``monai.handlers.CheckpointLoader``.
    """

    def __init__(
        self,
        load_path: str | Path | None,
        load_dict: dict[str, Any],
        key: str = "trainer",
        **kwargs: Any,
    ):
        self.resume_path = None if load_path is None else str(load_path)
        self.engine_key = key
        if self.resume_path is not None:
            # A copy: the bundle hands the same dictionary to the saver.
            super().__init__(load_path=self.resume_path, load_dict=dict(load_dict), **kwargs)

    def attach(self, engine: Engine) -> None:
        """Adds ``engine`` to the loaded objects, then attaches as ``CheckpointLoader`` does."""
        if self.resume_path is None:
            return
        if not Path(self.load_path).is_file():
            raise FileNotFoundError(f"checkpoint to resume from not found: {self.load_path}")
        self.load_dict[self.engine_key] = engine
        super().attach(engine)


__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "TrainingCheckpointLoader",
    "TrainingCheckpointSaver",
]
