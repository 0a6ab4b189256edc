"""Model logging, registration and the champion alias, on a real SQLite-backed MLflow store."""

import mlflow
import mlflow.pytorch
import numpy as np
import pytest
import torch

from thyroid_monai import keys
from thyroid_monai.io.checkpoints import UntrustedCheckpointError, load_logged_model
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.tracking import register_model


def finished_run(uri, dice):
    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("reg") or client.get_experiment(
        client.create_experiment("reg")
    )
    run = client.create_run(experiment.experiment_id)
    if dice is not None:
        client.log_metric(run.info.run_id, "val_mean_dice", dice)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def test_champion_moves_only_to_a_better_version(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    model = MultitaskUNet(num_classes=3, backbone="resnet10").eval()
    example = np.random.default_rng(0).random((1, 1, 64, 64), dtype=np.float32)

    def register(dice):
        return register_model(model, run_id=finished_run(uri, dice), registered_name="thyroid",
                              input_example=example, key_metric="val_mean_dice",
                              tracking_uri=uri)  # fmt: skip

    first, worse, missing, better = register(0.5), register(0.4), register(None), register(0.7)
    assert (first.version, first.promoted) == ("1", True)
    assert (worse.version, worse.promoted, worse.previous_champion) == ("2", False, "1")
    assert not missing.promoted
    assert "no 'val_mean_dice'" in missing.reason
    assert (better.version, better.promoted, better.previous_champion) == ("4", True, "1")

    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("thyroid", "champion").version) == "4"
    assert client.get_run(finished_run(uri, None)).info.status == "FINISHED"

    # The champion loads back as the original module and gives the same outputs.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    with pytest.raises(UntrustedCheckpointError, match=r"thyroid@champion.*--trust-model"):
        load_logged_model("models:/thyroid@champion")  # a pickle: never loaded without trust
    loaded = load_logged_model("models:/thyroid@champion", trust=True)
    assert isinstance(loaded, MultitaskUNet)
    batch = torch.from_numpy(np.repeat(example, 3, axis=0))  # any batch size, not the example's
    with torch.no_grad():
        expected, actual = model(batch), loaded.eval()(batch)
    assert torch.allclose(expected[keys.CLS], actual[keys.CLS])
    assert torch.allclose(expected[keys.SEG], actual[keys.SEG])
    info = mlflow.models.get_model_info("models:/thyroid/4")
    # the image signature, and no input example (MLflow cannot validate one for a model
    # returning a dictionary)
    assert info.signature.inputs.inputs[0].shape[1:] == (1, 64, 64)
    assert info.saved_input_example_info is None
