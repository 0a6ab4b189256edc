"""What a training run was configured with: recorded in the run folder, and checked for old names.

Every training writes ``<bundle_root>/configs/train.json`` (the merged config files with every
command-line override) and ``configs/metadata.json`` beside it, so the run folder has a bundle's
layout: ``infer --model RUN``, the evaluation overlay and ``ckpt_export`` read it, and a model
trained with overrides and without tracking is usable from its folder alone.

MONAI builds a bundle's components from a :class:`monai.bundle.ConfigParser` but hands them no
reference to it, and its own record of the executed config (``save_execute_config``) exists only
when tracking is on. So :class:`RunConfigSaver` finds the parser that is building it on the call
stack. The record leaves out what MONAI's tracking patch added (the tracking handlers and the
path of its own copy): evaluating or retraining from the record tracks only when asked to.
"""

from __future__ import annotations

import copy
import inspect
import json
import logging
from pathlib import Path
from typing import Any

from ignite.engine import Engine, Events
from monai.bundle import ConfigParser

from thyroid_monai.io.checkpoints import RUN_CONFIG
from thyroid_monai.io.files import write_json_atomic

logger = logging.getLogger(__name__)

RENAMED_SETTINGS: dict[str, str] = {
    "gradient_method_name": "gradient_method#name",
    **{f"rlar_{option}": f"rlar#{option}" for option in (
        "weight", "tau", "power", "absolute", "latent", "detach", "warmup_epochs", "every",
        "fold")},
    **{option: f"network_def#{option}" for option in (
        "embedding_dim", "radiomics_slice", "dropout", "decoder_norm", "level_head",
        "level_pooling")},
    **{option: f"loss#{option}" for option in (
        "label_smoothing", "class_weights", "level_loss", "radiomics_loss",
        "route_consistency")},
    "mask_dice_background": "loss#dice_background",
    "level_from": "tasks#level_from",
    "task_weights": "tasks#weights",
    "active_task_weights": "tasks#weights",
    "selection_metric": "tasks#selection",
    "num_classes": "label_grouping (the task set counts the classes)",
    "level_guide_epochs": "train#trainer#level_guide_epochs",
    "weight_decay": "optimizer#weight_decay",
    "base_keys": "the task set (thyroid_monai.tasks.TaskSet.sample_keys)",
    "reader_keys": "the task set (thyroid_monai.tasks.TaskSet.sample_keys)",
    "reference_keys": "the task set (thyroid_monai.tasks.REFERENCE_KEYS)",
    "load_transforms": "train#preprocessing / validate#preprocessing",
    "tracking_params": "the components' own tracking_params()",
}  # fmt: skip
"""Settings of bundle 0.2.0 and where they live now. MONAI accepts an override of an id that no
longer exists (it becomes an unused key), so a renamed setting would otherwise be ignored."""

TRACKING_HANDLER_PREFIXES = ("thyroid_monai.tracking.", "MLFlowHandler", "monai.handlers.MLFlow")
"""``_target_`` prefixes of the handlers MONAI's tracking patch appends (left out of the record)."""


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


def refuse_renamed_settings(config: dict[str, Any]) -> None:
    """Raises if ``config`` sets a setting under its bundle 0.2.0 name.

    Raises:
        ValueError: Naming every old id found and its new place.
    """
    found = [f"{old} is now {RENAMED_SETTINGS[old]}" for old in RENAMED_SETTINGS if old in config]
    if found:
        raise ValueError(
            "the configuration sets renamed bundle settings (bundle 0.3.0): " + "; ".join(found)
        )


def _is_tracking_handler(entry: Any) -> bool:
    target = entry.get("_target_") if isinstance(entry, dict) else None
    return isinstance(target, str) and target.startswith(TRACKING_HANDLER_PREFIXES)


def without_tracking_patch(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` without the handlers MONAI's tracking patch appended and its config copy path.

    The other settings the patch added stay: nothing refers to them once the handlers are gone,
    and a later ``--tracking`` sets them again.
    """
    record = copy.deepcopy(config)
    record.pop("save_execute_config", None)
    for section in ("train", "validate"):
        handlers = record.get(section, {}).get("handlers") if isinstance(record, dict) else None
        if isinstance(handlers, list):
            handlers[:] = [entry for entry in handlers if not _is_tracking_handler(entry)]
    return record


def write_run_config(config: dict[str, Any], run_dir: str | Path) -> Path:
    """Writes the record of a run: ``configs/train.json`` and its ``configs/metadata.json``.

    The paths of the run folder and of a plain ``dataset_dir`` are made absolute, so the record
    works from any working directory.

    Raises:
        TypeError: If the config holds a value JSON cannot store (it would not parse back).
    """
    run = Path(run_dir).resolve()
    record = without_tracking_patch(config)
    record["bundle_root"] = str(run)
    dataset = record.get("dataset_dir")
    if isinstance(dataset, str) and dataset[:1] not in ("$", "@", "%"):
        record["dataset_dir"] = str(Path(dataset).resolve())
    path = run / RUN_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    json.dumps(record)  # a value JSON cannot store raises here, before anything is written
    if record.get("_meta_"):
        write_json_atomic(path.parent / "metadata.json", record["_meta_"], indent=2)
    return write_json_atomic(path, record, indent=2)


class RunConfigSaver:
    """A training handler that records the run's configuration when the run starts.

    Build it inside the bundle config (``train#handlers``): the config it records is the one
    being executed, overrides included; a setting under a bundle 0.2.0 name is refused here,
    before anything trains. Built outside a bundle run it records nothing and says so.

    Args:
        path: The run folder (``@bundle_root``); the record is ``configs/train.json`` in it.

    Raises:
        ValueError: If the executing config sets a renamed setting (see :data:`RENAMED_SETTINGS`).
    """

    def __init__(self, path: str | Path):
        self.run_dir = Path(path)
        self.config = executing_config()
        if self.config is None:
            logger.info("RunConfigSaver: not built by a bundle parser; no run config recorded")
        else:
            refuse_renamed_settings(self.config)

    def attach(self, engine: Engine) -> None:
        """Writes the record when ``engine`` starts (a resumed run rewrites it)."""
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine | None = None) -> None:
        """Writes ``configs/train.json`` and ``configs/metadata.json``."""
        if self.config is not None:
            write_run_config(self.config, self.run_dir)
