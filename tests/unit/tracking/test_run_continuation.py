"""A run folder remembers its MLflow run: a resumed training continues it, records each epoch
once, and a fresh start closes the run a crash left open."""

from __future__ import annotations

import logging
from pathlib import Path

import mlflow
import pytest
from ignite.engine import Engine, Events

from thyroid_monai.tracking import (
    ResilientMLFlowHandler,
    read_run_file,
    write_run_file,
)
from thyroid_monai.workflows import sqlite_uri


def train(tmp_path: Path, *, epochs: int, resume_at: int = 0, close: bool = True,
          continue_run: bool = False, lr: float = 0.1) -> ResilientMLFlowHandler:  # fmt: skip
    engine = Engine(lambda engine, batch: {"loss": 1.0})

    @engine.on(Events.EPOCH_COMPLETED)
    def score(engine):  # attached before the MLflow handler, so it runs first
        engine.state.metrics["val_dice"] = 0.1 * engine.state.epoch

    handler = ResilientMLFlowHandler(
        fallback_dir=tmp_path / "offline", tracking_uri=sqlite_uri(tmp_path / "mlruns.db"),
        experiment_name="resume", run_name="r", iteration_log=False, close_on_complete=close,
        experiment_param={"lr": lr}, run_file=tmp_path / "mlflow_run.json",
        continue_run=continue_run,
    )  # fmt: skip
    handler.attach(engine)
    if resume_at:  # what TrainingCheckpointLoader restores
        engine.load_state_dict({"epoch": resume_at, "max_epochs": epochs, "epoch_length": 2})
    engine.run(range(2), max_epochs=epochs)
    return handler


def runs(tmp_path: Path) -> list[mlflow.entities.Run]:
    client = mlflow.MlflowClient(sqlite_uri(tmp_path / "mlruns.db"))
    return client.search_runs([client.get_experiment_by_name("resume").experiment_id])


def steps(tmp_path: Path, run_id: str) -> list[tuple[int, float]]:
    client = mlflow.MlflowClient(sqlite_uri(tmp_path / "mlruns.db"))
    return [(m.step, round(m.value, 6)) for m in client.get_metric_history(run_id, "val_dice")]


def test_a_resumed_training_continues_its_run_and_logs_each_epoch_once(tmp_path, caplog):
    train(tmp_path, epochs=3, close=False)  # killed after epoch 3 was logged ...
    (crashed,) = runs(tmp_path)
    assert crashed.info.status == "RUNNING"
    assert read_run_file(tmp_path / "mlflow_run.json")["run_id"] == crashed.info.run_id  # type: ignore[index]

    # ... with the last checkpoint at epoch 2: epoch 3 is trained and logged again
    with caplog.at_level(logging.WARNING):
        train(tmp_path, epochs=4, resume_at=2, continue_run=True, lr=0.2)
    (run,) = runs(tmp_path)
    assert run.info.run_id == crashed.info.run_id
    assert run.info.status == "FINISHED"
    assert steps(tmp_path, run.info.run_id) == [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4)]
    assert run.data.params["lr"] == "0.1"  # params cannot change; the first value is kept
    assert "keep them: ['lr']" in caplog.text


def test_a_fresh_start_closes_the_run_a_crash_left_open(tmp_path, caplog):
    # A run file naming a run of another store is not continued.
    write_run_file(tmp_path / "mlflow_run.json", "0" * 32, "sqlite:////elsewhere/mlruns.db")
    with caplog.at_level(logging.WARNING):
        train(tmp_path, epochs=1, close=False, continue_run=True)
    assert "is not in" in caplog.text
    (crashed,) = runs(tmp_path)
    assert read_run_file(tmp_path / "mlflow_run.json")["run_id"] == crashed.info.run_id  # type: ignore[index]

    train(tmp_path, epochs=2)  # no checkpoint to resume from: a new run
    by_id = {run.info.run_id: run for run in runs(tmp_path)}
    assert by_id[crashed.info.run_id].info.status == "KILLED"
    (new_id,) = set(by_id) - {crashed.info.run_id}
    assert by_id[new_id].info.status == "FINISHED"
    assert read_run_file(tmp_path / "mlflow_run.json")["run_id"] == new_id  # type: ignore[index]
    assert steps(tmp_path, new_id) == [(1, 0.1), (2, 0.2)]


def test_a_damaged_run_file_is_named(tmp_path):
    (tmp_path / "mlflow_run.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"mlflow_run\.json"):
        read_run_file(tmp_path / "mlflow_run.json")
