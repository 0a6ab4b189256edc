"""The MLflow handlers of a bundle run: tracking that survives an outage, and registration.

The bundle's MLflow handler is :class:`ResilientMLFlowHandler`:

* at start, a tracking server (``http(s)://``) is probed; if it does not answer, the run is
  recorded in a local SQLite store (``fallback_dir/mlruns.db``,
  :mod:`~thyroid_monai.tracking.offline`) from the first record on;
* during the run, the first call that fails because the server is unreachable switches the
  handler to the same local store, where it continues the run under the same name, tagged with
  the server's run id; the failed record is written there, so nothing is lost;
* MLflow's HTTP retries are capped (unless the user set them) so an outage stalls training for
  seconds, once, rather than minutes at every record;
* at the end, if the server answers again, the local records are replayed automatically
  (:func:`~thyroid_monai.tracking.sync.sync_offline_store`); if not,
  ``thyroid-monai sync <fallback_dir>`` replays them later.

A run folder remembers its MLflow run (``run_file``: run id and store), so that a training killed
and started again with the same command continues the same run (``continue_run``) rather than
opening a new one, and MONAI's default of joining *any* unfinished run of the experiment (another
person's, on a shared server) never applies. A continued run skips the metric points it already
holds (the epochs replayed after the last checkpoint are recorded once) and the params it already
holds (MLflow params cannot change).

When it opens a run, the handler records what the run is (:mod:`~thyroid_monai.tracking.lineage`):
its tags and one-line description (a ``run_record``) and its datalist split as an MLflow dataset
input (``dataset_split``: name, digest of the datalist and its files' hashes, source, split). A
handler that joins a run already opened (the validator joining its trainer's run, a resumed
training) adds its split's dataset and leaves the tags to the run's owner. With
``system_metrics`` it samples CPU, memory, disk, network and (with an NVIDIA GPU) GPU use into
the run (MLflow's ``system/*`` metrics) until the run closes.

The trainer's handler is :class:`RegisteringMLFlowHandler`, which also registers the best
checkpoint when training completes (:class:`~thyroid_monai.tracking.registry.ModelRegistration`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import mlflow
from ignite.engine import Engine
from mlflow.entities import Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH
from monai.handlers import MLFlowHandler
from monai.utils import flatten_dict

from thyroid_monai.data import Split
from thyroid_monai.io.files import write_json_atomic
from thyroid_monai.tracking.lineage import (
    DESCRIPTION_TAG,
    RunRecord,
    datalist_lineage,
    dataset_input,
    dataset_inputs,
)
from thyroid_monai.tracking.offline import (
    REMOTE_RUN_TAG,
    _write_state,
    is_unreachable,
    local_store_uri,
    server_answers,
)
from thyroid_monai.tracking.registry import ModelRegistration, quieter
from thyroid_monai.tracking.sync import sync_offline_store

logger = logging.getLogger(__name__)

RUNNING = "RUNNING"
# Retry settings applied when the user has not chosen their own (MLflow's defaults retry for
# minutes on every call).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class ResilientMLFlowHandler(MLFlowHandler):
    """MONAI's ``MLFlowHandler`` that falls back to a local store when the server is unreachable.

    Args:
        fallback_dir: Folder of the local store used during an outage (created on demand).
        probe_timeout: Seconds to wait for the server's health endpoint at start.
        replay_on_close: Replay the local records when the run closes and the server answers.
        run_file: JSON file in the run folder naming the MLflow run of that folder (run id and
            store). ``None``: MONAI's own choice of run.
        continue_run: Continue the run named in ``run_file`` (a resumed training; the validator
            joining its trainer's run). Otherwise a new run is started and recorded there, and
            the run it replaces is marked ``KILLED`` if it was left running.
        run_record: The run's tags and description (set when this handler starts the run).
        dataset_split: The datalist split the engine reads (``train``, ``validate``, ``test``),
            logged as a dataset input of the run; ``None`` logs none. Needs ``run_record``.
        purpose: What the run does, for its description (``training``, ``evaluation``).
        system_metrics: Sample system metrics into the run while it is open.
        **kwargs: Arguments of ``monai.handlers.MLFlowHandler``.
    """

    def __init__(
        self,
        fallback_dir: str | Path,
        probe_timeout: float = 5.0,
        replay_on_close: bool = True,
        run_file: str | Path | None = None,
        continue_run: bool = False,
        run_record: RunRecord | None = None,
        dataset_split: str | None = None,
        purpose: str = "training",
        system_metrics: bool = False,
        **kwargs: Any,
    ):
        for variable, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(variable, value)
        super().__init__(**kwargs)
        self.fallback_dir = Path(fallback_dir)
        self.probe_timeout = probe_timeout
        self.replay_on_close = replay_on_close
        self.remote_uri = os.environ.get("MLFLOW_TRACKING_URI") or kwargs.get("tracking_uri") or ""
        self.offline = False
        self.run_file = Path(run_file) if run_file is not None else None
        self.continue_run = continue_run
        # (metric key, step) points and params the continued run already held when it was opened
        self._logged_points: set[tuple[str, int]] = set()
        self._logged_params: dict[str, str] = {}
        self.run_record = run_record
        self.dataset_split = dataset_split
        self.purpose = purpose
        self.system_metrics = system_metrics
        self._joined = False  # this handler continued a run opened before (it owns no tags)
        self._monitor: SystemMetricsMonitor | None = None

    def _go_offline(self, reason: BaseException | str) -> None:
        """Switches every further record to the local store, continuing the same run there."""
        remote_run_id = self.cur_run.info.run_id if self.cur_run is not None else None
        store = local_store_uri(self.fallback_dir)
        self.fallback_dir.mkdir(parents=True, exist_ok=True)
        logger.warning(
            "tracking server %s is unreachable (%s); recording to %s. Run `thyroid-monai sync %s` "
            "once it is back if the records are not replayed automatically.",
            self.remote_uri,
            reason,
            store,
            self.fallback_dir,
        )
        self.offline = True
        self.client = mlflow.MlflowClient(tracking_uri=store)
        self.artifact_location = (self.fallback_dir / "mlruns").resolve().as_uri()
        self.experiment = None
        self.cur_run = None
        _write_state(self.fallback_dir, self.remote_uri, pending=True)
        sampling = self._monitor is not None
        self._stop_system_metrics(flush=False)  # its points cannot reach the server
        if remote_run_id is not None:
            self.cur_run = self._local_continuation(remote_run_id)
            if sampling:
                self._start_system_metrics()  # into the local run from now on

    def _local_continuation(self, remote_run_id: str) -> mlflow.entities.Run:
        """The local run that continues a server run during an outage (found or created)."""
        # Tagged with the server's id so the replay appends to that run. The trainer's and the
        # validator's handlers (and a resumed training) find the same local run through that tag.
        self._set_experiment()
        assert self.experiment is not None
        existing = self.client.search_runs(
            [self.experiment.experiment_id],
            filter_string=f"tags.`{REMOTE_RUN_TAG}` = '{remote_run_id}'",
        )
        running = [run for run in existing if run.info.status == RUNNING]
        if running:
            return running[0]
        return self.client.create_run(
            self.experiment.experiment_id,
            run_name=self.run_name,
            tags={REMOTE_RUN_TAG: remote_run_id},
        )

    def _recorded_run(self, recorded: dict[str, Any]) -> mlflow.entities.Run | None:
        """The run named in the run file, if this handler's store holds it."""
        if recorded.get("tracking_uri") == self.client.tracking_uri:
            try:
                return self.client.get_run(recorded["run_id"])
            except MlflowException as error:
                if is_unreachable(error):
                    raise
                return None
        if self.offline and recorded.get("tracking_uri") == self.remote_uri:
            return self._local_continuation(recorded["run_id"])
        return None

    def _open_run(self) -> None:
        """Continues the run of the run file, or starts a new run and records it there."""
        if self.cur_run is not None or self.run_file is None:
            return
        recorded = read_run_file(self.run_file)
        if self.continue_run and recorded is not None:
            run = self._recorded_run(recorded)
            if run is not None:
                self._continue(run)
                return
            logger.warning(
                "the MLflow run %s recorded in %s is not in %s; starting a new run",
                recorded.get("run_id"),
                self.run_file,
                self.client.tracking_uri,
            )
        elif recorded is not None:
            self._end_abandoned(recorded)
        self._set_experiment()
        assert self.experiment is not None
        run_name = self.run_name or f"run_{time.strftime('%Y%m%d_%H%M%S')}"
        self.cur_run = self.client.create_run(self.experiment.experiment_id, run_name=run_name)
        write_run_file(self.run_file, self.cur_run.info.run_id, self.client.tracking_uri)

    def _continue(self, run: mlflow.entities.Run) -> None:
        run_id = run.info.run_id
        if run.info.status != RUNNING:
            self.client.update_run(run_id, status=RUNNING)
        self._logged_params = dict(run.data.params)
        self._logged_points = {
            (key, metric.step)
            for key in run.data.metrics
            for metric in self.client.get_metric_history(run_id, key)
        }
        self.cur_run = self.client.get_run(run_id)
        self._joined = True
        logger.info("continuing MLflow run %s (%s)", run_id, self.client.tracking_uri)

    def _end_abandoned(self, recorded: dict[str, Any]) -> None:
        """Marks the run a new one replaces as killed if it was left running (a crash)."""
        run = self._recorded_run(recorded) if not self.offline else None
        if run is not None and run.info.status == RUNNING:
            self.client.set_terminated(run.info.run_id, "KILLED")

    def _log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        """Logs the points the run does not hold yet (replayed epochs are recorded once)."""
        if self._logged_points:
            metrics = {
                key: value
                for key, value in flatten_dict(metrics).items()
                if (key, step or 0) not in self._logged_points
            }
            if not metrics:
                return
        super()._log_metrics(metrics, step)

    def _resilient(self, call: Callable[[], None]) -> None:
        try:
            call()
        except Exception as error:
            if self.offline or not is_unreachable(error):
                raise
            self._go_offline(error)
            call()

    def _log_params(self, params: dict[str, Any]) -> None:
        """Logs params in batches MLflow accepts, skipping those the run already holds.

        A run continued after an interruption logs its params again; MLflow refuses to change a
        logged param, so an existing key keeps its first value (a changed value is reported).
        """
        if not self.cur_run:
            raise ValueError("Current Run is not Active to log params")
        logged = self.client.get_run(self.cur_run.info.run_id).data.params
        changed = sorted(k for k, v in params.items() if k in logged and logged[k] != str(v))
        if changed:
            logger.warning("params already logged with other values keep them: %s", changed)
        fresh = [Param(key, str(value)) for key, value in params.items() if key not in logged]
        for start in range(0, len(fresh), MAX_PARAMS_TAGS_PER_BATCH):
            batch = fresh[start : start + MAX_PARAMS_TAGS_PER_BATCH]
            self.client.log_batch(run_id=self.cur_run.info.run_id, params=batch)

    def start(self, engine: Engine) -> None:
        """Probes the server first; starts or continues the run on it or in the local store.

        Then records what the run is (tags, description, dataset input) and starts sampling
        system metrics if asked.
        """
        if not self.offline and not server_answers(self.remote_uri, self.probe_timeout):
            self._go_offline("no answer from its health endpoint")
        self._resilient(self._open_run)
        self._resilient(lambda: super(ResilientMLFlowHandler, self).start(engine))
        self._resilient(self._describe_run)
        if self.system_metrics:
            self._start_system_metrics()

    def _describe_run(self) -> None:
        """Tags and description (on a run this handler started) and the split's dataset input."""
        if self.cur_run is None or self.run_record is None:
            return
        run_id = self.cur_run.info.run_id
        if not self._joined:
            tags = self.run_record.tags()
            tags[DESCRIPTION_TAG] = self.run_record.description(self.purpose, tags)
            self.client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        if self.dataset_split is None:
            return
        split = cast(Split, self.dataset_split)  # an unknown split is refused by the loader
        lineage = datalist_lineage(self.run_record.datalist, split, self.run_record.fold)
        logged = dataset_inputs(self.client.get_run(run_id))
        if any(
            logged_input.dataset.digest == lineage.digest
            and any(tag.value == lineage.context for tag in logged_input.tags)
            for logged_input in logged
        ):
            return  # a resumed run holds it already
        self.client.log_inputs(run_id, datasets=[dataset_input(lineage)])

    def _start_system_metrics(self) -> None:
        if self.cur_run is None or self._monitor is not None:
            return
        # MLflow announces the monitor's start, stop and the absence of a GPU at INFO level.
        with quieter("mlflow.system_metrics"):
            self._monitor = SystemMetricsMonitor(
                self.cur_run.info.run_id,
                resume_logging=self._joined,
                tracking_uri=self.client.tracking_uri,
            )
            self._monitor.start()

    def _stop_system_metrics(self, flush: bool = True) -> None:
        """Stops sampling; ``flush=False`` drops the points not uploaded yet (server gone)."""
        if self._monitor is None:
            return
        if not flush:
            self._monitor.mlflow_logger.data = []
        with quieter("mlflow.system_metrics"):
            self._monitor.finish()
        self._monitor = None

    def epoch_completed(self, engine: Engine) -> None:
        """Logs epoch metrics, locally if the server has gone away."""
        self._resilient(lambda: super(ResilientMLFlowHandler, self).epoch_completed(engine))

    def iteration_completed(self, engine: Engine) -> None:
        """Logs iteration values, locally if the server has gone away."""
        self._resilient(lambda: super(ResilientMLFlowHandler, self).iteration_completed(engine))

    def complete(self) -> None:
        """Logs the artifacts, locally if the server has gone away."""
        self._resilient(super().complete)

    def close(self) -> None:
        """Ends the run; replays the local records if the server answers again."""
        self._stop_system_metrics()
        self._resilient(super().close)
        if self.offline and self.replay_on_close and server_answers(self.remote_uri):
            try:
                report = sync_offline_store(self.fallback_dir, self.remote_uri)
                logger.warning("tracking server is back: %s", report.summary())
            except Exception as error:  # the records stay local; sync can be run by hand
                if not is_unreachable(error):
                    raise
                logger.warning(
                    "replay to %s failed (%s); run `thyroid-monai sync`", self.remote_uri, error
                )


def read_run_file(path: str | Path) -> dict[str, Any] | None:
    """The run recorded in a run folder's run file (``run_id``, ``tracking_uri``), if any.

    Raises:
        ValueError: If the file exists but is not a run file (names the file).
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not a valid MLflow run file: {error}") from error
    if not isinstance(recorded, dict) or not isinstance(recorded.get("run_id"), str):
        raise ValueError(f"{path} is not a valid MLflow run file: no run_id")
    return recorded


def write_run_file(path: str | Path, run_id: str, tracking_uri: str) -> None:
    """Records (atomically) which MLflow run, in which store, a run folder belongs to."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"run_id": run_id, "tracking_uri": tracking_uri})


class RegisteringMLFlowHandler(ResilientMLFlowHandler):
    """The trainer's MLflow handler that also registers the model when training completes.

    After the artifacts are logged and before the run is closed, :class:`ModelRegistration`
    logs and registers the best checkpoint in the same run. A bundle disables this handler on
    ranks other than 0, so only rank 0 registers.

    Args:
        registration: What to register (``None``: track only, as ``ResilientMLFlowHandler``).
        **kwargs: Arguments of :class:`ResilientMLFlowHandler`.
    """

    def __init__(self, registration: ModelRegistration | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.registration = registration

    def complete(self) -> None:
        """Logs the artifacts, then registers the model."""
        super().complete()
        if self.registration is not None:
            self.registration.register(self)
