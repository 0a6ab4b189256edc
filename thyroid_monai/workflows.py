"""Running the bundle's train and evaluate workflows from Python, and reading back their results.

The bundle under ``bundles/thyroid_us_multitask`` is the one definition of the training workflow;
these helpers run it exactly as ``python -m monai.bundle run`` does, with ``bundle_root`` pointing
at a run folder so that checkpoints (``models/``) and the MLflow store (``eval/``) land there.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigWorkflow

from thyroid_monai.io.files import atomic_path

BUNDLE_NAME = "thyroid_us_multitask"


def default_bundle_dir() -> Path:
    """The bundle folder: ``$THYROID_MONAI_BUNDLE`` if set, else the repository's copy.

    Raises:
        FileNotFoundError: If neither exists (names the paths tried).
    """
    candidates = []
    if os.environ.get("THYROID_MONAI_BUNDLE"):
        candidates.append(Path(os.environ["THYROID_MONAI_BUNDLE"]))
    candidates.append(Path(__file__).resolve().parents[1] / "bundles" / BUNDLE_NAME)
    for candidate in candidates:
        if (candidate / "configs" / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(
        f"bundle not found in {[str(c) for c in candidates]}; set THYROID_MONAI_BUNDLE"
    )


def sqlite_uri(path: str | Path) -> str:
    """``sqlite:///`` URI of a database file (absolute path)."""
    return f"sqlite:///{Path(path).resolve()}"


def tracking_store(run_dir: str | Path) -> Path:
    """Where the bundle's embedded MLflow store of a run folder lives."""
    return Path(run_dir) / "eval" / "mlruns.db"


class OutputFolderError(OSError):
    """The run folder cannot take the run's outputs (read-only, full, or not a folder)."""


def check_output_folder(folder: str | Path, *, min_free_mb: float = 200.0) -> Path:
    """Fails fast, before any training, if ``folder`` cannot hold checkpoints and logs.

    Args:
        folder: The run folder (created if missing).
        min_free_mb: Free space required; a checkpoint of the default model is about 60 MB and
            the trainer keeps the best one and the latest one.

    Returns:
        The folder.

    Raises:
        OutputFolderError: If it cannot be created, is not a folder, is not writable or has less
            free space than ``min_free_mb``; the message names the folder and the cause.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputFolderError(f"the output path {folder} exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputFolderError(
            f"cannot create the output folder {folder}: {error.strerror}"
        ) from error
    try:
        with atomic_path(folder / ".write-test") as probe:
            probe.write_bytes(b"\0" * 4096)
        (folder / ".write-test").unlink()
    except OSError as error:
        raise OutputFolderError(
            f"the output folder {folder} is not writable: {error.strerror or error}"
        ) from error
    free_mb = shutil.disk_usage(folder).free / 2**20
    if free_mb < min_free_mb:
        raise OutputFolderError(
            f"the output folder {folder} has {free_mb:.1f} MB free; a run needs at least "
            f"{min_free_mb:.0f} MB for checkpoints and tracking"
        )
    return folder


def run_bundle(
    config_names: Sequence[str],
    *,
    run_dir: str | Path,
    dataset_dir: str | Path,
    bundle_dir: str | Path | None = None,
    tracking: bool = True,
    quiet: bool = False,
    overrides: Mapping[str, Any] | None = None,
) -> ConfigWorkflow:
    """Runs a bundle workflow built from the named config files, merged in order.

    Args:
        config_names: Config file names inside ``configs/`` (``"train.yaml"``, ...).
        run_dir: Folder for checkpoints and tracking (``bundle_root`` of the run).
        dataset_dir: Folder holding ``datalist.json``.
        bundle_dir: The bundle; defaults to :func:`default_bundle_dir`.
        tracking: Track the run in MLflow with the bundle's ``configs/tracking.yaml``.
        quiet: Skip the bundle's logging config (no per-iteration log lines).
        overrides: Further config overrides (``{"max_epochs": 3, ...}``).

    Returns:
        The finished workflow (its parser holds the resolved config).
    """
    check_output_folder(run_dir)
    bundle = Path(bundle_dir) if bundle_dir else default_bundle_dir()
    configs = [str(bundle / "configs" / name) for name in config_names]
    # quiet: MONAI's notices about the defaults chosen here ("no workflow type", "logging file
    # is set to False") say nothing a user can act on.
    notices = logging.getLogger("monai.bundle.workflows")
    level = notices.level
    if quiet:
        notices.setLevel(logging.ERROR)
    try:
        workflow = ConfigWorkflow(
            config_file=configs,
            meta_file=str(bundle / "configs" / "metadata.json"),
            logging_file=False if quiet else str(bundle / "configs" / "logging.conf"),
            tracking=str(bundle / "configs" / "tracking.yaml") if tracking else None,
            workflow_type=None,
            bundle_root=str(Path(run_dir).resolve()),
            dataset_dir=str(Path(dataset_dir).resolve()),
            **dict(overrides or {}),
        )
    finally:
        notices.setLevel(level)
    try:
        workflow.initialize()
        workflow.run()
    except RuntimeError as error:
        root = root_cause(error)
        if root is error:
            raise
        raise BundleRunError(f"{type(root).__name__}: {root}") from error
    workflow.finalize()
    return workflow


class BundleRunError(RuntimeError):
    """A bundle run failed; the message is the root cause's, not MONAI's wrapper's.

    MONAI reports a failure while it builds a component as "Failed to instantiate component
    ..." and keeps the reason (a datalist item without targets, a missing file) in the chain of
    causes; the user needs the reason first.
    """


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception of ``error``'s chain of causes (``error`` itself if none)."""
    seen = {id(error)}
    while error.__cause__ is not None and id(error.__cause__) not in seen:
        error = error.__cause__
        seen.add(id(error))
    return error


def read_metrics_csv(path: str | Path) -> dict[str, float]:
    """Reads the ``name,value`` file that MONAI's ``MetricsSaver`` writes."""
    metrics = {}
    with Path(path).open(newline="") as handle:
        for row in csv.reader(handle):
            if len(row) >= 2:
                metrics[row[0]] = float(row[1])
    return metrics
