"""The replay of a local fallback store onto the tracking server (``thyroid-monai sync``).

:func:`sync_offline_store` copies every run of the store the server does not hold yet. Replay is
idempotent: metric points, params and artifacts already on the server are not duplicated, and a
run that started on the server continues there under its original id (the local run carries the
server's run id as a tag). Each replayed local run is tagged with the server run it went to.
Tags (with the run's description and git commit, MLflow's own tags otherwise stay local) and
dataset inputs are replayed too.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException

from thyroid_monai.tracking.lineage import dataset_inputs
from thyroid_monai.tracking.offline import (
    REMOTE_RUN_TAG,
    STORE_FILE,
    SYNCED_TAG,
    _write_state,
    is_unreachable,
    local_store_uri,
    recorded_target,
)

REPLAYED_MLFLOW_TAGS = frozenset({"mlflow.note.content", "mlflow.source.git.commit"})
"""MLflow's own tags that a replay copies: the run's description and code version (the others,
such as the user and the source file, describe the local process)."""


@dataclass
class SyncReport:
    """What a replay copied."""

    runs: list[str] = field(default_factory=list)
    metrics: int = 0
    params: int = 0
    artifacts: int = 0
    skipped_params: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{len(self.runs)} run(s) replayed: {self.metrics} metric points, "
            f"{self.params} params, {self.artifacts} artifact file(s)"
        )


def _remote_experiment(client: mlflow.MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name))


def _remote_run(client: mlflow.MlflowClient, experiment_id: str, local: mlflow.entities.Run) -> str:
    wanted = local.data.tags.get(REMOTE_RUN_TAG)
    if wanted:
        try:
            return str(client.get_run(wanted).info.run_id)
        except MlflowException as error:
            if is_unreachable(error):
                raise
    created = client.create_run(experiment_id, run_name=local.info.run_name)
    return str(created.info.run_id)


def _copy_run(
    local_client: mlflow.MlflowClient,
    remote_client: mlflow.MlflowClient,
    local: mlflow.entities.Run,
    remote_run_id: str,
    report: SyncReport,
) -> None:
    run_id = local.info.run_id
    remote = remote_client.get_run(remote_run_id)
    params = []
    for key, value in local.data.params.items():
        if key not in remote.data.params:
            params.append(Param(key, value))
        elif remote.data.params[key] != value:
            report.skipped_params.append(key)  # MLflow params are immutable; the server keeps its
    metrics = []
    for key in local.data.metrics:
        present = {
            (m.step, m.timestamp, m.value) for m in _history(remote_client, remote_run_id, key)
        }
        metrics += [
            Metric(key, m.value, m.timestamp, m.step)
            for m in _history(local_client, run_id, key)
            if (m.step, m.timestamp, m.value) not in present
        ]
    tags = [
        RunTag(key, value)
        for key, value in local.data.tags.items()
        if (not key.startswith("mlflow.") or key in REPLAYED_MLFLOW_TAGS) and key != REMOTE_RUN_TAG
    ]
    for start in range(0, max(len(metrics), 1), 1000):
        chunk = metrics[start : start + 1000]
        remote_client.log_batch(
            remote_run_id,
            metrics=chunk,
            params=params if start == 0 else [],
            tags=tags if start == 0 else [],
        )
    _copy_dataset_inputs(local, remote, remote_client)
    with tempfile.TemporaryDirectory() as folder:
        if local_client.list_artifacts(run_id):
            downloaded = Path(local_client.download_artifacts(run_id, "", folder))
            report.artifacts += sum(1 for p in downloaded.rglob("*") if p.is_file())
            remote_client.log_artifacts(remote_run_id, str(downloaded))
    if local.info.status != "RUNNING":
        remote_client.set_terminated(remote_run_id, local.info.status, local.info.end_time)
    report.metrics += len(metrics)
    report.params += len(params)
    report.runs.append(remote_run_id)


def _copy_dataset_inputs(
    local: mlflow.entities.Run, remote: mlflow.entities.Run, remote_client: mlflow.MlflowClient
) -> None:
    """The local run's dataset inputs the server run lacks (same digest and tags: same input)."""

    def identity(entry: mlflow.entities.DatasetInput) -> tuple[str, str, tuple[str, ...]]:
        tags = tuple(sorted(f"{tag.key}={tag.value}" for tag in entry.tags))
        return entry.dataset.name, entry.dataset.digest, tags

    present = {identity(entry) for entry in dataset_inputs(remote)}
    missing = [entry for entry in dataset_inputs(local) if identity(entry) not in present]
    if missing:
        remote_client.log_inputs(remote.info.run_id, datasets=missing)


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[Metric]:
    return list(client.get_metric_history(run_id, key))


def sync_offline_store(folder: str | Path, target_uri: str | None = None) -> SyncReport:
    """Replays every run of a fallback store onto a tracking server.

    Args:
        folder: The fallback folder (holding ``mlruns.db``).
        target_uri: The server; defaults to the one recorded when the store was created, then to
            ``MLFLOW_TRACKING_URI``.

    Returns:
        What was copied.

    Raises:
        FileNotFoundError: If the folder holds no fallback store.
        ValueError: If no target server is known.
        MlflowException: If the server is still unreachable (nothing is marked as synced).
    """
    folder = Path(folder)
    if not (folder / STORE_FILE).is_file():
        raise FileNotFoundError(f"no offline tracking store in {folder} (expected {STORE_FILE})")
    target = target_uri or recorded_target(folder) or os.environ.get("MLFLOW_TRACKING_URI")
    if not target:
        raise ValueError(f"no target server for {folder}: pass one or set MLFLOW_TRACKING_URI")
    local_client = mlflow.MlflowClient(local_store_uri(folder))
    remote_client = mlflow.MlflowClient(target)
    report = SyncReport()
    for experiment in local_client.search_experiments():
        runs = local_client.search_runs([experiment.experiment_id], max_results=10_000)
        for local in runs:
            if local.data.tags.get(SYNCED_TAG):
                continue
            experiment_id = _remote_experiment(remote_client, experiment.name)
            remote_run_id = _remote_run(remote_client, experiment_id, local)
            _copy_run(local_client, remote_client, local, remote_run_id, report)
            local_client.set_tag(local.info.run_id, SYNCED_TAG, remote_run_id)
    _write_state(folder, target, pending=False)
    return report
