"""Checkpoint files: safe loading, atomic saving, and finding the newest complete one.

``torch.load`` of a full pickle runs whatever code the file names, so a checkpoint or model from
an untrusted place must never be unpickled by default. Everything this project saves is a
dictionary of tensors, numbers, strings and lists, which ``torch.load(weights_only=True)`` reads
without executing anything; :func:`load_checkpoint` does exactly that and only falls back to a
full unpickle when the caller says the file is trusted (``trust=True``, ``--trust-model`` on the
command line).
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from thyroid_monai.io.files import atomic_path

logger = logging.getLogger(__name__)

RUN_CONFIG = Path("configs") / "train.json"
"""Where, inside a run folder (``bundle_root``), the training configuration is recorded."""

# The names ``TrainingCheckpointSaver`` gives its per-epoch checkpoints (ignite's pattern with
# the ``epoch`` score name).
EPOCH_CHECKPOINT = re.compile(r"^checkpoint_epoch=(\d+)\.pt$")


class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint needs a full unpickle (it may run code) and was not marked as trusted."""


def load_checkpoint(path: str | Path, *, trust: bool = False, map_location: Any = "cpu") -> Any:
    """Loads a file written by ``torch.save`` without running code from it, unless trusted.

    Args:
        path: The file.
        trust: Allow a full unpickle when the file holds more than tensors and plain containers.
            Only for files from a source you trust: unpickling can run arbitrary code.
        map_location: Passed to ``torch.load``.

    Returns:
        The loaded object.

    Raises:
        FileNotFoundError: If the file does not exist.
        UntrustedCheckpointError: If the file needs a full unpickle and ``trust`` is false; the
            message names the file and the flag.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust:
            raise UntrustedCheckpointError(
                f"{path} holds pickled Python objects beyond tensors, which can run code when "
                f"loaded; load it only if you trust its source, with trust=True (--trust-model "
                f"on the command line). The loader said: {str(error).splitlines()[0]}"
            ) from error
    logger.warning("fully unpickling %s (trusted by the caller)", path)
    return torch.load(path, map_location=map_location, weights_only=False)


def load_logged_model(model_uri: str, *, trust: bool = False, map_location: Any = "cpu") -> Any:
    """Loads an ``mlflow.pytorch`` model (a whole pickled module), only when trusted.

    Versions registered before the served pyfunc (:mod:`thyroid_monai.tracking.served_model`)
    were logged with ``mlflow.pytorch``, a pickle of the network: loading one runs code from the
    tracking server's artifact store. Without ``trust`` this
    refuses; the safe alternative is to build the network from the bundle config and load a
    checkpoint's weights with :func:`load_checkpoint`.

    Args:
        model_uri: ``models:/name@alias``, ``runs:/id/model``...
        trust: The tracking server and its artifact store are trusted.
        map_location: Device for the loaded tensors.

    Raises:
        UntrustedCheckpointError: Without ``trust`` (names the URI and the flag).
    """
    if not trust:
        raise UntrustedCheckpointError(
            f"the MLflow model {model_uri} is a pickled module, which can run code when loaded; "
            "load it only from a tracking server you trust, with trust=True (--trust-model on "
            "the command line), or load a checkpoint's weights with load_checkpoint"
        )
    import mlflow.pytorch

    logger.warning("fully unpickling the MLflow model %s (trusted by the caller)", model_uri)
    return mlflow.pytorch.load_model(model_uri, map_location=map_location)


def save_checkpoint_atomic(checkpoint: Mapping[str, Any], path: str | Path) -> Path:
    """Writes ``torch.save(checkpoint)`` so that ``path`` is either the old or the whole new file.

    The file is written beside its destination, flushed to disk, then renamed over it: a kill or
    a crash during the save leaves the previous file intact and at most a hidden temporary file.
    """
    path = Path(path)
    with atomic_path(path) as temporary:
        with temporary.open("wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())
        # The temporary file is private (0600); the checkpoint gets the usual permissions so a
        # team sharing a run folder can read it.
        temporary.chmod(0o666 & ~_umask())
    return path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def is_complete_checkpoint(path: str | Path) -> bool:
    """Whether a ``torch.save`` file is whole: a readable zip archive whose every CRC matches."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The complete ``checkpoint_epoch=N.pt`` with the highest ``N`` in ``folder``, if any.

    Incomplete files (from a writer that was not atomic, or a damaged disk) are skipped with a
    warning naming them, so a resumed run starts from the newest checkpoint that can be read.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    numbered = []
    for path in folder.iterdir():
        match = EPOCH_CHECKPOINT.match(path.name)
        if match and path.is_file():
            numbered.append((int(match.group(1)), path))
    for _, path in sorted(numbered, reverse=True):
        if is_complete_checkpoint(path):
            return path
        logger.warning("skipping the incomplete checkpoint %s", path)
    return None


def resume_checkpoint(resume_from: str | Path | None, checkpoint_dir: str | Path) -> Path | None:
    """The checkpoint a training run continues from.

    Args:
        resume_from: ``None`` to start afresh, ``"auto"`` for the newest complete checkpoint in
            ``checkpoint_dir`` (none there: start afresh), or the path of a checkpoint.
        checkpoint_dir: The run's checkpoint folder.

    Returns:
        The checkpoint, or ``None`` to start from scratch.

    Raises:
        FileNotFoundError: If an explicit path does not exist.
    """
    if resume_from is None:
        return None
    if str(resume_from) == "auto":
        found = latest_checkpoint(checkpoint_dir)
        if found is not None:
            logger.info("resuming from %s", found)
        return found
    path = Path(resume_from)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint to resume from not found: {path}")
    return path


__all__ = [
    "EPOCH_CHECKPOINT",
    "UntrustedCheckpointError",
    "is_complete_checkpoint",
    "latest_checkpoint",
    "load_checkpoint",
    "load_logged_model",
    "resume_checkpoint",
    "save_checkpoint_atomic",
]
