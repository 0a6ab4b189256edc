"""The run folder records the configuration it was trained with: ``configs/train.json``.

``infer``, the evaluation overlay and the export read it back, so a model trained with
command-line overrides and without tracking is usable from its folder alone (``--model RUN``).

MONAI builds a bundle's components from a :class:`monai.bundle.ConfigParser` but hands them no
reference to it, and its own record of the executed config (``save_execute_config``) is written
only when tracking is on. So :class:`RunConfigSaver` finds the parser that is instantiating it on
the call stack when it is built: the merged config files with every override applied, exactly
what MONAI's tracking would save.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

RUN_CONFIG = Path("configs") / "train.json"
"""Where, inside a run folder (``bundle_root``), the training configuration is recorded."""

logger = logging.getLogger(__name__)


def executing_config() -> dict[str, Any] | None:
    """The raw config of the bundle parser building the caller, or None outside a bundle run."""
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, ConfigParser):
                return copy.deepcopy(candidate.get())
            frame = frame.f_back
        return None
    finally:
        del frame  # frames hold references to their locals


def write_run_config(config: dict[str, Any], run_dir: str | Path) -> Path:
    """Writes ``config`` to ``<run_dir>/configs/train.json`` atomically; returns the path.

    The bundle metadata of the config (``_meta_``) goes to ``configs/metadata.json`` beside it,
    so the run folder has a bundle's layout: MONAI's tools find the metadata where they look.
    """
    path = Path(run_dir) / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    if config.get("_meta_"):
        _write_json(config["_meta_"], path.parent / "metadata.json")
    _write_json(config, path)
    return path


def _write_json(content: Any, path: Path) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".json")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(content, stream, indent=2, default=str)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class RunConfigSaver:
    """A training handler that records the run's configuration when the run starts.

    Build it inside the bundle config (``train#handlers``): the config it records is the one
    being executed, overrides included. Built outside a bundle run it records nothing and says
    so once.

    Args:
        path: The run folder (``@bundle_root``); the file is ``configs/train.json`` in it.
    """

    def __init__(self, path: str | Path):
        self.run_dir = Path(path)
        self.config = executing_config()
        if self.config is None:
            logger.info("RunConfigSaver: not built by a bundle parser; no run config recorded")

    def attach(self, engine: Engine) -> None:
        """Writes the record when ``engine`` starts (a resumed run rewrites it)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Writes ``configs/train.json``."""
        if self.config is not None:
            write_run_config(self.config, self.run_dir)
