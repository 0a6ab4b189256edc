"""The team setting: bundle training tracked on an MLflow server backed by PostgreSQL."""

import json

import mlflow
import torch

from data_prep.phantom import write_phantom_dataset
from thyroid_monai.inference import load_model
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.workflows import run_bundle


def test_training_is_tracked_on_a_postgres_backed_server(mlflow_server, tmp_path, monkeypatch):
    data_dir = tmp_path / "data"
    config = PhantomConfig(seed=21, render=RenderSettings(height=64, width=64))
    write_phantom_dataset(data_dir, 16, config, folds=2, test_fraction=0.25, progress=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)

    run_bundle(
        ["train.yaml"],
        run_dir=tmp_path / "run",
        dataset_dir=data_dir,
        quiet=True,
        overrides={"max_epochs": 2, "image_size": [64, 64], "batch_size": 4, "run_name": "team"},
    )

    client = mlflow.MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    assert experiment is not None
    assert experiment.artifact_location.startswith("mlflow-artifacts:")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "team"
    assert run.info.status == "FINISHED"
    assert run.data.params["max_epochs"] == "2"
    history = client.get_metric_history(run.info.run_id, "train_loss_seg")
    assert [m.step for m in history] == [1, 2]
    dice_history = client.get_metric_history(run.info.run_id, "val_mean_dice")
    assert len(dice_history) == 2
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.pt" in artifacts
    # The artifact really went through the server: download it back.
    local = client.download_artifacts(run.info.run_id, "model.pt", str(tmp_path / "back"))
    assert (tmp_path / "back" / "model.pt").stat().st_size > 1_000_000
    assert local.endswith("model.pt")
    assert not (tmp_path / "run" / "eval" / "mlruns.db").exists()  # nothing went to a local store

    # The best checkpoint is registered on the server, and the first version is the champion.
    record = json.loads((tmp_path / "run" / "eval" / "registration.json").read_text())
    assert (record["version"], record["promoted"], record["run_id"]) == ("1", True, run.info.run_id)
    champion = client.get_model_version_by_alias("thyroid_us_multitask", "champion")
    assert (str(champion.version), champion.run_id) == ("1", run.info.run_id)
    assert float(champion.tags["val_mean_dice"]) == max(m.value for m in dice_history)
    # env: the server; the served pyfunc's weights came back through the artifact proxy
    model = load_model("models:/thyroid_us_multitask@champion", trust=True).network
    assert isinstance(model, MultitaskUNet)
    best = torch.load(tmp_path / "run" / "models" / "model.pt", weights_only=True)
    assert all(torch.equal(value, best[name]) for name, value in model.state_dict().items())
