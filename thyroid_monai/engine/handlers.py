"""Handlers the bundle cannot express declaratively."""

from __future__ import annotations

from typing import Any

from ignite.engine import Engine
from monai.handlers import CheckpointSaver


class TrainingCheckpointSaver(CheckpointSaver):
    """``CheckpointSaver`` that also stores the state of the engine it is attached to.

    A config cannot hand a trainer its own reference (``train#trainer`` inside
    ``train#handlers`` is circular), so the engine is added to the saved objects under ``key``
    when the handler is attached. Together with model, optimiser and scheduler this is what
    resuming needs: epoch, iteration and the states of everything that changes during training.

    Args:
        key: Name of the engine's entry in the checkpoint.
        **kwargs: Arguments of ``monai.handlers.CheckpointSaver`` (``save_dir``, ``save_dict``,
            ``save_interval``, ``n_saved``, ``file_prefix``...).
    """

    def __init__(self, key: str = "trainer", **kwargs: Any):
        super().__init__(**kwargs)
        self.engine_key = key

    def attach(self, engine: Engine) -> None:
        """Adds ``engine`` to the saved objects, then attaches as ``CheckpointSaver`` does."""
        # ignite's Checkpoint keeps a reference to this same dictionary, so the entry added here
        # is saved from the first checkpoint on.
        self.save_dict[self.engine_key] = engine
        super().attach(engine)
