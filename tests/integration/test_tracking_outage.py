"""A tracking outage costs no records: local fallback during the run, replay afterwards."""

import mlflow
import pytest
from ignite.engine import Engine, Events

from data_prep.phantom import write_phantom_dataset
from thyroid_monai.cli import main
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.tracking import ResilientMLFlowHandler, needs_sync, recorded_target
from thyroid_monai.workflows import run_bundle


@pytest.fixture(autouse=True)
def _quick_failures(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def test_server_lost_mid_run_then_replayed_into_the_same_run(sqlite_mlflow_server, tmp_path):
    server = sqlite_mlflow_server.start()
    artifact = tmp_path / "checkpoint.pt"
    artifact.write_bytes(b"weights" * 100)
    engine = Engine(lambda engine, batch: {"loss": 1.0})

    @engine.on(Events.EPOCH_COMPLETED)
    def record_metrics(engine):  # attached before the MLflow handler, so it runs first
        engine.state.metrics["val_dice"] = 0.1 * engine.state.epoch
        if engine.state.epoch == 2:
            server.stop()  # the server dies after epoch 2 is computed, before it is logged

    handler = ResilientMLFlowHandler(
        fallback_dir=tmp_path / "offline", tracking_uri=server.uri, experiment_name="outage",
        run_name="r1", iteration_log=False, artifacts=[str(artifact)], close_on_complete=True,
        replay_on_close=False, experiment_param={"lr": 0.01},
    )  # fmt: skip
    handler.attach(engine)
    engine.run(range(2), max_epochs=4)
    assert handler.offline
    assert recorded_target(tmp_path / "offline") == server.uri
    assert needs_sync(tmp_path / "offline")

    server.start()
    assert main(["sync", str(tmp_path / "offline")]) == 0
    assert main(["sync", str(tmp_path / "offline")]) == 0  # a second replay changes nothing

    client = mlflow.MlflowClient(server.uri)
    (run,) = client.search_runs([client.get_experiment_by_name("outage").experiment_id])
    assert run.info.run_name == "r1"
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "val_dice")
    assert [(m.step, round(m.value, 6)) for m in history] == [
        (1, 0.1),
        (2, 0.2),
        (3, 0.3),
        (4, 0.4),
    ]
    assert run.data.params["lr"] == "0.01"
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["checkpoint.pt"]
    assert not needs_sync(tmp_path / "offline")


def test_training_with_the_server_down_at_start_is_replayed_later(sqlite_mlflow_server, tmp_path,
                                                                  monkeypatch):  # fmt: skip
    data = tmp_path / "data"
    config = PhantomConfig(seed=31, render=RenderSettings(height=64, width=64))
    write_phantom_dataset(data, 12, config, folds=2, test_fraction=0.2, progress=False)
    server = sqlite_mlflow_server  # not started: the port answers nothing
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    run_dir = tmp_path / "run"
    run_bundle(
        ["train.yaml"], run_dir=run_dir, dataset_dir=data, quiet=True,
        overrides={"max_epochs": 2, "image_size": [64, 64], "batch_size": 4, "run_name": "down"},
    )  # fmt: skip
    offline = run_dir / "eval" / "offline"
    local = mlflow.MlflowClient(f"sqlite:///{offline / 'mlruns.db'}")
    (local_run,) = local.search_runs(
        [local.get_experiment_by_name("thyroid_us_multitask").experiment_id]
    )
    assert len(local.get_metric_history(local_run.info.run_id, "train_loss_seg")) == 2

    server.start()
    assert main(["sync", str(offline)]) == 0
    client = mlflow.MlflowClient(server.uri)
    (run,) = client.search_runs(
        [client.get_experiment_by_name("thyroid_us_multitask").experiment_id]
    )
    assert run.info.run_name == "down"
    for metric in ("train_loss_seg", "val_mean_dice"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2]
    assert "model.pt" in {a.path for a in client.list_artifacts(run.info.run_id)}
