"""Registering the best checkpoint when training completes, and later after a tracking outage."""

import json
import logging
import os

import mlflow
import pytest
import torch
from ignite.engine import Engine

from thyroid_monai.cli import main
from thyroid_monai.inference import load_model
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.tracking import (
    PENDING_FILE,
    REGISTRATION_FILE,
    ModelRegistration,
    RegisteringMLFlowHandler,
    register_pending,
    sync_offline_store,
)

NETWORK = {"_target_": "thyroid_monai.networks.MultitaskUNet", "num_classes": 3,
           "backbone": "resnet10"}  # fmt: skip
# what the served model needs besides the network: its input size and level classes
RUN_SETTINGS = {"image_size": [64, 64], "label_grouping": "risk3", "tirads_scheme": "acr"}


@pytest.fixture(autouse=True)
def _quick_failures(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")


def training(tmp_path, tracking_uri, dice=0.6):
    """A finished 'training': best checkpoint on disk, evaluator state, the handler attached."""
    run_dir = tmp_path / "run"
    (run_dir / "models").mkdir(parents=True)
    network = MultitaskUNet(num_classes=3, backbone="resnet10")
    torch.save(network.state_dict(), run_dir / "models" / "model.pt")  # the best epoch
    with torch.no_grad():  # later epochs moved the weights on; the best checkpoint must win
        next(network.parameters()).add_(1.0)
    (run_dir / "eval").mkdir()
    config_file = run_dir / "eval" / "config.json"
    config_file.write_text(json.dumps({"network_def": NETWORK, **RUN_SETTINGS}), encoding="utf-8")
    evaluator = Engine(lambda engine, batch: None)
    evaluator.state.key_metric_name = "val_mean_dice"
    evaluator.state.best_metric = dice
    evaluator.state.best_metric_epoch = 1
    registration = ModelRegistration(
        network=network, checkpoint=run_dir / "models" / "model.pt", evaluator=evaluator,
        registered_name="thyroid", input_shape=[1, 1, 64, 64], config_file=config_file,
        record_dir=run_dir / "eval",
    )  # fmt: skip
    handler = RegisteringMLFlowHandler(
        registration=registration, fallback_dir=run_dir / "eval" / "offline",
        tracking_uri=tracking_uri, experiment_name="reg", run_name="r", iteration_log=False,
        close_on_complete=True,
    )  # fmt: skip
    trainer = Engine(lambda engine, batch: {"loss": 1.0})
    handler.attach(trainer)
    trainer.run([0], max_epochs=1)
    return run_dir, handler


def test_the_best_checkpoint_is_registered_in_the_run_at_completion(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    run_dir, _ = training(tmp_path, uri)
    assert "MLFLOW_TRACKING_URI" not in os.environ  # registering leaves the process as it was
    assert mlflow.get_tracking_uri() != uri
    record = json.loads((run_dir / "eval" / REGISTRATION_FILE).read_text())
    assert (record["version"], record["promoted"], record["metric"]) == ("1", True, 0.6)
    client = mlflow.MlflowClient(uri)
    version = client.get_model_version_by_alias("thyroid", "champion")
    assert version.run_id == record["run_id"]
    assert client.get_run(record["run_id"]).info.status == "FINISHED"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    loaded = load_model("models:/thyroid@champion", trust=True).network
    saved = torch.load(run_dir / "models" / "model.pt", weights_only=True)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_an_outage_postpones_registration_until_register(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        run_dir, handler = training(tmp_path, "http://127.0.0.1:9")  # nothing listens on port 9
    assert handler.offline
    assert not (run_dir / "eval" / REGISTRATION_FILE).exists()
    assert (run_dir / "eval" / PENDING_FILE).is_file()
    assert f"thyroid-monai register {run_dir}" in caplog.text

    server = f"sqlite:///{tmp_path / 'server.db'}"
    with pytest.raises(RuntimeError, match="thyroid-monai sync"):
        register_pending(run_dir, server)  # the run only exists in the local store so far
    sync_offline_store(run_dir / "eval" / "offline", server)
    assert main(["register", str(run_dir), "--to", server]) == 0

    assert not (run_dir / "eval" / PENDING_FILE).exists()
    record = json.loads((run_dir / "eval" / REGISTRATION_FILE).read_text())
    client = mlflow.MlflowClient(server)
    (run,) = client.search_runs([client.get_experiment_by_name("reg").experiment_id])
    assert record["run_id"] == run.info.run_id  # the replayed run on the server
    assert client.get_model_version_by_alias("thyroid", "champion").run_id == run.info.run_id
    with pytest.raises(FileNotFoundError, match="no pending registration"):
        register_pending(run_dir, server)


def test_no_checkpoint_means_nothing_registered(tmp_path, caplog):
    network = MultitaskUNet(num_classes=3, backbone="resnet10")
    registration = ModelRegistration(
        network=network, checkpoint=tmp_path / "missing.pt", evaluator=Engine(lambda e, b: None),
        registered_name="thyroid", input_shape=[1, 1, 64, 64], config_file="c.json",
        record_dir=tmp_path,
    )  # fmt: skip
    handler = RegisteringMLFlowHandler(registration=registration, fallback_dir=tmp_path / "off",
                                       tracking_uri="sqlite:///unused.db")  # fmt: skip
    with caplog.at_level(logging.WARNING):
        assert registration.register(handler) is None
    assert "no best checkpoint" in caplog.text
    assert not (tmp_path / PENDING_FILE).exists()
    assert not (tmp_path / REGISTRATION_FILE).exists()
