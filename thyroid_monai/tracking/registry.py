"""Logging a trained model to MLflow, registering it, and promoting the champion.

The model is logged as a ``python_function`` model that MLflow serves as it is
(``mlflow models serve -m models:/<name>@champion``): an ultrasound image array (and optional
spacing) in, the nodule mask, the level probabilities and the report out
(:mod:`~thyroid_monai.tracking.served_model`). It is logged *from code* with the best
checkpoint's state dict and the run's config as artifacts: loading it unpickles nothing (the
weights load with ``weights_only=True``); it runs the package source logged with it. Every logged
model becomes a new version of a registered model; the alias ``champion`` moves to the new
version only when its key metric beats the current champion's.

In a bundle run, :class:`~thyroid_monai.tracking.handlers.RegisteringMLFlowHandler` (the
trainer's MLflow handler) registers the best checkpoint through :class:`ModelRegistration` when
training completes. During a tracking outage the registration is postponed and
:func:`register_pending` (``thyroid-monai register``) completes it later.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import mlflow.pyfunc
import numpy as np
import torch
from ignite.engine import Engine
from mlflow.exceptions import MlflowException
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from thyroid_monai.io.files import write_json_atomic
from thyroid_monai.tracking.offline import SYNCED_TAG, is_unreachable, local_store_uri
from thyroid_monai.tracking.served_model import (
    CONFIG_ARTIFACT,
    MODEL_CODE,
    WEIGHTS_ARTIFACT,
    serving_signature,
)

if TYPE_CHECKING:  # the handler module imports this one
    from thyroid_monai.tracking.handlers import ResilientMLFlowHandler

logger = logging.getLogger(__name__)

CHAMPION_ALIAS = "champion"
TRACKING_URI_VARIABLE = "MLFLOW_TRACKING_URI"
PROGRESS_BAR_VARIABLE = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
PACKAGE_DIR = Path(__file__).resolve().parent.parent  # thyroid_monai/, logged as the model's code


@dataclass(frozen=True)
class Registration:
    """What happened when a model was registered.

    Attributes:
        name: Registered model name.
        version: The new version.
        model_uri: ``models:/<name>/<version>``.
        metric: The new run's key metric (``None`` if the run has none).
        promoted: Whether the alias now points at the new version.
        previous_champion: The version the alias pointed at before, if any.
        reason: One sentence explaining the decision.
    """

    name: str
    version: str
    model_uri: str
    metric: float | None
    promoted: bool
    previous_champion: str | None
    reason: str


@contextlib.contextmanager
def _tracking_uri(uri: str | None) -> Iterator[None]:
    """Points MLflow's fluent API at ``uri`` for the duration, then restores the process as it was.

    ``mlflow.set_tracking_uri`` also exports the URI as ``MLFLOW_TRACKING_URI``, and restoring a
    previous URI exports that one: the variable is put back as it was, since every tracking
    handler started later in the process would follow it.
    """
    if uri is None:
        yield
        return
    variable = os.environ.get(TRACKING_URI_VARIABLE)
    try:
        with _use_tracking_uri(uri):
            yield
    finally:
        if variable is None:
            os.environ.pop(TRACKING_URI_VARIABLE, None)
        else:
            os.environ[TRACKING_URI_VARIABLE] = variable


@contextlib.contextmanager
def quieter(logger_name: str) -> Iterator[None]:
    """Shows only warnings and errors of one logger while the block runs."""
    chosen = logging.getLogger(logger_name)
    level = chosen.level
    chosen.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        chosen.setLevel(level)


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """No artifact download bars while MLflow checks the request example (unless chosen)."""
    chosen = os.environ.get(PROGRESS_BAR_VARIABLE)
    os.environ[PROGRESS_BAR_VARIABLE] = chosen or "false"
    try:
        yield
    finally:
        if chosen is None:
            os.environ.pop(PROGRESS_BAR_VARIABLE, None)


def _requirements() -> list[str]:
    """Pinned requirements of the logged model, stated rather than inferred.

    MLflow would otherwise infer them by importing the model in a subprocess, which takes seconds
    per model and records the local ``+cpu`` label of torch differently.
    """
    import monai

    torch_version = torch.__version__.split("+")[0]
    return [f"torch=={torch_version}", f"monai=={monai.__version__}", f"numpy=={np.__version__}"]


def _current_champion(
    client: mlflow.MlflowClient, name: str, alias: str
) -> mlflow.entities.model_registry.ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST" or "not found" in str(error).lower():
            return None
        raise


def _is_better(new: float, old: float | None, greater_is_better: bool) -> bool:
    if old is None:
        return True
    return new > old if greater_is_better else new < old


def _version_metric(
    client: mlflow.MlflowClient,
    version: mlflow.entities.model_registry.ModelVersion,
    key_metric: str,
) -> float | None:
    """The key metric a version was registered with (its tag), else its run's last value."""
    tagged = version.tags.get(key_metric)
    if tagged is not None:
        return None if tagged == "None" else float(tagged)
    if not version.run_id:
        return None
    value = client.get_run(version.run_id).data.metrics.get(key_metric)
    return None if value is None else float(value)


def register_model(
    model: torch.nn.Module,
    *,
    run_id: str,
    registered_name: str,
    config_file: str | Path,
    input_example: np.ndarray,
    key_metric: str,
    metric: float | None = None,
    greater_is_better: bool = True,
    tracking_uri: str | None = None,
    alias: str = CHAMPION_ALIAS,
) -> Registration:
    """Logs ``model`` to the run as a servable pyfunc, registers a new version, promotes if better.

    The new version is tagged with its key metric. It competes with the champion's tag (for a
    champion registered without one: the last value of the key metric in the champion's run).

    Args:
        model: The trained network (its state dict is logged).
        run_id: The MLflow run the model belongs to.
        registered_name: Name in the model registry.
        config_file: The run's bundle config (JSON or YAML), from which the served model rebuilds
            the network (``network_def``, ``image_size``, ``label_grouping``, ``tirads_scheme``).
        input_example: A request the served model answers, ``(images, rows, columns)`` gray
            levels 0-255 (no patient pixels: see :func:`serving_example`).
        key_metric: Metric that ranks versions (for example ``val_mean_dice``).
        metric: The model's value of ``key_metric`` (the best checkpoint's, not the last epoch's);
            ``None`` reads the last value logged in the run.
        greater_is_better: Direction of the key metric.
        tracking_uri: Tracking server or store; ``None`` uses MLflow's current URI.
        alias: The alias that marks the best version.

    Returns:
        The new version and whether the alias moved to it.
    """
    client = mlflow.MlflowClient(tracking_uri)
    if metric is None:
        metric = client.get_run(run_id).data.metrics.get(key_metric)
    version = _log_and_register(
        model, run_id, registered_name, Path(config_file), input_example, tracking_uri
    )
    champion = _current_champion(client, registered_name, alias)
    previous = str(champion.version) if champion is not None else None
    promoted, reason = _contest(client, champion, key_metric, metric, greater_is_better)
    client.set_model_version_tag(registered_name, version, key_metric, str(metric))
    if promoted:
        client.set_registered_model_alias(registered_name, alias, version)
    return Registration(
        name=registered_name,
        version=version,
        model_uri=f"models:/{registered_name}/{version}",
        metric=metric,
        promoted=promoted,
        previous_champion=previous,
        reason=reason,
    )


def _log_and_register(
    model: torch.nn.Module,
    run_id: str,
    registered_name: str,
    config_file: Path,
    input_example: np.ndarray,
    tracking_uri: str | None,
) -> str:
    """Logs the served model (code, weights, config) to the run; returns the new version."""
    if not config_file.is_file():
        raise FileNotFoundError(f"the run config {config_file} to log with the model is missing")
    with tempfile.TemporaryDirectory(prefix="thyroid-model-") as folder:
        weights = Path(folder) / "model.pt"
        # tensors only: the served model loads them with weights_only=True
        state = {k: v.detach().cpu() for k, v in _unwrapped(model).state_dict().items()}
        torch.save(state, weights)
        # MLflow validates the request example by loading the model and announces it (INFO)
        with (
            _tracking_uri(tracking_uri),
            mlflow.start_run(run_id=run_id),
            quieter("mlflow.pyfunc"),
            _without_progress_bars(),
        ):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(MODEL_CODE),
                artifacts={WEIGHTS_ARTIFACT: str(weights), CONFIG_ARTIFACT: str(config_file)},
                code_paths=[str(PACKAGE_DIR)],
                signature=serving_signature(),
                input_example=input_example,
                registered_model_name=registered_name,
                pip_requirements=_requirements(),
            )
    return str(info.registered_model_version)


def _contest(
    client: mlflow.MlflowClient,
    champion: mlflow.entities.model_registry.ModelVersion | None,
    key_metric: str,
    metric: float | None,
    greater_is_better: bool,
) -> tuple[bool, str]:
    """Whether the new version beats the champion on ``key_metric``, and why (or why not)."""
    if metric is None:
        return False, f"the run has no '{key_metric}' metric to compete with"
    if champion is None:
        return True, "there was no champion yet"
    champion_metric = _version_metric(client, champion, key_metric)
    versus = f"version {champion.version} ({champion_metric})"
    if _is_better(metric, champion_metric, greater_is_better):
        return True, f"{key_metric} {metric:.4f} beats {versus}"
    return False, f"{key_metric} {metric:.4f} does not beat {versus}"


# --- registration when training completes ------------------------------------------------------

REGISTRATION_FILE = "registration.json"
PENDING_FILE = "registration_pending.json"


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    """The module itself, out of a ``DistributedDataParallel`` wrapper."""
    if isinstance(network, torch.nn.parallel.DistributedDataParallel):
        return network.module
    return network


def best_model(network: torch.nn.Module, checkpoint: str | Path) -> torch.nn.Module:
    """A CPU copy of ``network`` in eval mode with the weights of ``checkpoint``.

    The checkpoint is MONAI's ``CheckpointSaver`` file of the key metric: with one saved object,
    ignite stores its state dict directly; with several, under their names (``model``).
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    model = copy.deepcopy(_unwrapped(network)).cpu()
    model.load_state_dict(state)
    return model.eval()


def example_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A random float32 batch of ``shape``: the logged input example holds no patient pixels."""
    return np.random.default_rng(seed).random(tuple(shape), dtype=np.float32)


def serving_example(input_shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """The logged request example: one random gray image (0-255) of the network's input size.

    Args:
        input_shape: The network input ``[batch, channels, x, y]``.
        seed: Seed of the noise (no patient pixels are ever logged).

    Returns:
        ``(1, rows, columns)`` float32, rows = y and columns = x.
    """
    x, y = (int(n) for n in input_shape[-2:])
    return np.round(example_input((1, y, x), seed) * 255.0)


class ModelRegistration:
    """Logs and registers the best checkpoint of a finished training.

    :meth:`register` loads the best checkpoint into a copy of the network, logs it with
    a servable pyfunc to the tracking handler's run, registers a new version of
    ``registered_name`` and moves the ``champion`` alias to it only if its key metric (the
    evaluator's best value of its key metric, the one the checkpoint was selected on) beats the
    champion's (:func:`register_model`). ``<record_dir>/registration.json`` records the outcome.

    If the tracking server is unreachable (the handler went offline during the run, or
    registering fails to connect), nothing is registered: a warning says so, and
    ``<record_dir>/registration_pending.json`` holds what ``thyroid-monai register RUN_DIR`` needs
    to register the run later.

    Args:
        network: The trained network (the best weights are loaded into a copy).
        checkpoint: The best checkpoint (``models/model.pt``).
        evaluator: The validation evaluator (key metric name and best value).
        registered_name: Name in the model registry.
        input_shape: Shape of the logged input example, ``[1, channels, x, y]``.
        config_file: The merged config, from which ``register`` rebuilds the network.
        record_dir: Where the outcome (or the pending registration) is written.
        network_id: Id of the network definition in the merged config.
        greater_is_better: Direction of the key metric.
        alias: The alias that marks the best version.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        checkpoint: str | Path,
        evaluator: Engine,
        registered_name: str,
        input_shape: Sequence[int],
        config_file: str | Path,
        record_dir: str | Path,
        network_id: str = "network_def",
        greater_is_better: bool = True,
        alias: str = CHAMPION_ALIAS,
    ):
        self.network = network
        self.checkpoint = Path(checkpoint)
        self.evaluator = evaluator
        self.registered_name = registered_name
        self.input_shape = [int(n) for n in input_shape]
        self.config_file = Path(config_file)
        self.record_dir = Path(record_dir)
        self.network_id = network_id
        self.greater_is_better = greater_is_better
        self.alias = alias

    def key_metric(self) -> tuple[str, float | None]:
        """The evaluator's key metric and its best value (``None`` if it never evaluated)."""
        state: Any = self.evaluator.state  # MONAI adds the key-metric fields to ignite's State
        name = str(state.key_metric_name)
        validated = state.best_metric_epoch is not None and state.best_metric_epoch >= 0
        return name, float(state.best_metric) if validated else None

    def register(self, tracking: ResilientMLFlowHandler) -> Registration | None:
        """Registers the best checkpoint in the run of ``tracking`` (still open).

        Returns:
            The registration, or ``None`` when it was postponed or there is no checkpoint.
        """
        if not self.checkpoint.is_file():
            logger.warning("no best checkpoint at %s: no model was registered", self.checkpoint)
            return None
        if tracking.cur_run is None:
            raise RuntimeError("the MLflow handler has no open run to register the model in")
        run_id = tracking.cur_run.info.run_id
        uri = tracking.client.tracking_uri
        name, value = self.key_metric()
        pending = {
            "run_id": run_id,
            "tracking_uri": tracking.remote_uri or uri,
            "fallback_dir": str(tracking.fallback_dir.resolve()) if tracking.offline else None,
            "registered_name": self.registered_name,
            "key_metric": name,
            "metric": value,
            "greater_is_better": self.greater_is_better,
            "alias": self.alias,
            "checkpoint": str(self.checkpoint.resolve()),
            "config_file": str(self.config_file.resolve()),
            "network_id": self.network_id,
            "input_shape": self.input_shape,
        }
        if tracking.offline:
            self._postpone(pending, "the tracking server was unreachable during the run")
            return None
        try:
            registration = register_model(
                best_model(self.network, self.checkpoint),
                run_id=run_id,
                registered_name=self.registered_name,
                config_file=self.config_file,
                input_example=serving_example(self.input_shape),
                key_metric=name,
                metric=value,
                greater_is_better=self.greater_is_better,
                tracking_uri=uri,
                alias=self.alias,
            )
        except Exception as error:
            if not is_unreachable(error):
                raise
            self._postpone(pending, f"the tracking server is unreachable ({error})")
            return None
        _record(self.record_dir, registration, run_id, uri)
        return registration

    def _postpone(self, pending: dict[str, Any], reason: str) -> None:
        self.record_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.record_dir / PENDING_FILE, pending)
        run_dir = self.record_dir.parent
        logger.warning(
            "model not registered: %s. Once the server is back (and `thyroid-monai sync` has "
            "replayed an offline run), register it with `thyroid-monai register %s`.",
            reason,
            run_dir,
        )


def _record(folder: Path, registration: Registration, run_id: str, uri: str | None) -> None:
    record = {**dataclasses.asdict(registration), "run_id": run_id, "tracking_uri": uri}
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(folder / REGISTRATION_FILE, record)
    logger.info(
        "registered %s version %s (%s)%s",
        registration.name,
        registration.version,
        registration.reason,
        "; alias moved to it" if registration.promoted else "",
    )


def _server_run_id(pending: Mapping[str, Any]) -> str:
    """The run on the server: the recorded one, or the one an offline run was replayed into."""
    fallback = pending.get("fallback_dir")
    if not fallback:
        return str(pending["run_id"])
    local = mlflow.MlflowClient(local_store_uri(fallback))
    try:
        synced = local.get_run(pending["run_id"]).data.tags.get(SYNCED_TAG)
    except MlflowException:  # not a local run: the recorded id is the server's
        return str(pending["run_id"])
    if not synced:
        raise RuntimeError(
            f"the run was recorded offline in {fallback} and not replayed yet: run "
            f"`thyroid-monai sync {fallback}` first"
        )
    return str(synced)


def register_pending(run_dir: str | Path, tracking_uri: str | None = None) -> Registration:
    """Registers a run whose registration was postponed by a tracking outage.

    Args:
        run_dir: The run folder (``bundle_root``) holding ``eval/registration_pending.json``.
        tracking_uri: The server; defaults to the one the run was tracked on.

    Returns:
        The registration (also written to ``eval/registration.json``; the pending file goes).

    Raises:
        FileNotFoundError: If the run has no pending registration or its files are missing.
        RuntimeError: If an offline run has not been replayed onto the server yet.
    """
    folder = Path(run_dir) / "eval"
    pending_path = folder / PENDING_FILE
    if not pending_path.is_file():
        raise FileNotFoundError(f"{run_dir} has no pending registration ({pending_path})")
    pending = json.loads(pending_path.read_text(encoding="utf-8"))
    for key in ("checkpoint", "config_file"):
        if not Path(pending[key]).is_file():
            raise FileNotFoundError(f"{pending_path} names {key} {pending[key]}, which is missing")
    uri = tracking_uri or pending["tracking_uri"]
    run_id = _server_run_id(pending)
    from monai.bundle import ConfigParser

    parser = ConfigParser(ConfigParser.load_config_file(pending["config_file"]))
    if parser.get("imports") is not None:
        parser.get_parsed_content("imports")
    network = parser.get_parsed_content(pending["network_id"])
    registration = register_model(
        best_model(network, pending["checkpoint"]),
        run_id=run_id,
        registered_name=pending["registered_name"],
        config_file=pending["config_file"],
        input_example=serving_example(pending["input_shape"]),
        key_metric=pending["key_metric"],
        metric=pending["metric"],
        greater_is_better=pending["greater_is_better"],
        tracking_uri=uri,
        alias=pending["alias"],
    )
    _record(folder, registration, run_id, uri)
    pending_path.unlink()
    return registration
