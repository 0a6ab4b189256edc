"""Model logging, registration and the champion alias, on a real SQLite-backed MLflow store."""

import json

import mlflow
import mlflow.pyfunc
import numpy as np
import pytest
import torch

from thyroid_monai import keys
from thyroid_monai.inference import UntrustedModelError, load_model
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.tracking import register_model

CONFIG = {
    "network_def": {"_target_": "thyroid_monai.networks.MultitaskUNet", "num_classes": 5,
                    "backbone": "resnet10"},
    "image_size": [64, 64], "label_grouping": "acr5", "tirads_scheme": "acr",
}  # fmt: skip


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
    model = MultitaskUNet(num_classes=5, backbone="resnet10").eval()
    config = tmp_path / "config.json"
    config.write_text(json.dumps(CONFIG), encoding="utf-8")
    example = np.round(np.random.default_rng(0).random((1, 64, 64), dtype=np.float32) * 255)

    def register(dice):
        return register_model(model, run_id=finished_run(uri, dice), registered_name="thyroid",
                              config_file=config, input_example=example,
                              key_metric="val_mean_dice", tracking_uri=uri)  # fmt: skip

    first, worse, missing, better = register(0.5), register(0.4), register(None), register(0.7)
    assert (first.version, first.promoted) == ("1", True)
    assert (worse.version, worse.promoted, worse.previous_champion) == ("2", False, "1")
    assert not missing.promoted
    assert "no 'val_mean_dice'" in missing.reason
    assert (better.version, better.promoted, better.previous_champion) == ("4", True, "1")

    client = mlflow.MlflowClient(uri)
    assert str(client.get_model_version_by_alias("thyroid", "champion").version) == "4"
    assert client.get_run(finished_run(uri, None)).info.status == "FINISHED"

    # The champion is a pyfunc with a signature and a validated request example; it runs the
    # inference pipeline on the original weights (loaded weights-only from the artifacts).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)  # restored after the test
    info = mlflow.models.get_model_info("models:/thyroid/4")
    assert set(info.flavors) == {"python_function"}  # no pickled torch module
    assert info.signature.inputs.inputs[0].shape == (-1, -1, -1)  # images of any size
    assert info.signature.outputs.input_names() == ["mask", "level_probabilities", "level",
                                                    "report"]  # fmt: skip
    assert info.saved_input_example_info is not None
    with pytest.raises(UntrustedModelError, match=r"thyroid@champion.*--trust-model"):
        load_model("models:/thyroid@champion")  # loading runs the model's code: trust first
    loaded = load_model("models:/thyroid@champion", trust=True)
    assert loaded.kind == "mlflow"
    assert loaded.grouping is not None
    assert loaded.grouping.name == "acr5"
    batch = torch.rand(3, 1, 64, 64)  # any batch size
    with torch.no_grad():
        expected, actual = model(batch), loaded.network.eval()(batch)
    assert torch.allclose(expected[keys.CLS], actual[keys.CLS])
    assert torch.allclose(expected[keys.SEG], actual[keys.SEG])
    served = mlflow.pyfunc.load_model("models:/thyroid@champion")
    answer = served.predict(np.repeat(example, 2, axis=0), params={"spacing_mm": [0.1, 0.1]})
    assert answer["mask"].shape == (2, 64, 64)
    assert answer["level_probabilities"].sum(axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    report = json.loads(answer["report"][0])
    assert report["input"]["spacing_mm"] == [0.1, 0.1]
    assert report["tirads"]["class"] == answer["level"][0]
