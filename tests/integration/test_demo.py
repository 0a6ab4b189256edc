"""The main job end to end, small: phantom -> DICOM export -> prep dicom -> training -> test."""

import json

import mlflow

from thyroid_monai.cli import main
from thyroid_monai.workflows import sqlite_uri, tracking_store


def test_demo_tracks_one_finished_run_with_epoch_metrics_and_checkpoint(tmp_path, capfd,
                                                                      assert_no_phi,
                                                                      monkeypatch):  # fmt: skip
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a run of seconds
    run_dir = tmp_path / "demo"
    code = main(["demo", "--out", str(run_dir), "--n", "24", "--epochs", "2",
                 "--image-size", "64", "--batch-size", "4", "--workers", "1"])  # fmt: skip
    assert code == 0
    captured = capfd.readouterr()
    printed = captured.out
    # a run where nothing failed says nothing alarming (MLflow, MONAI and tqdm included)
    for alarming in ("error", "failed", "traceback", "warning"):
        assert alarming not in (captured.out + captured.err).lower(), alarming
    assert "epoch 2/2  loss" in printed  # one summary line per epoch
    assert "Dice (nodule mask)" in printed
    assert "audit passed" in printed
    assert len(list((run_dir / "export").rglob("*_seg.dcm"))) == 24  # masks as DICOM SEG
    datalist = json.loads((run_dir / "data" / "datalist.json").read_text())
    assert datalist["source"] == "dicom"
    assert datalist["deidentified"]
    assert all(i["patient"].startswith("ANON-") for i in datalist["training"])
    assert f"mlflow ui --backend-store-uri {sqlite_uri(tracking_store(run_dir))}" in printed

    client = mlflow.MlflowClient(sqlite_uri(tracking_store(run_dir)))
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["backbone"] == "resnet18"
    for metric in ("val_mean_dice", "val_accuracy", "train_loss_seg", "train_loss_cls"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, metric)] == [1, 2]
    assert "test_mean_dice" in run.data.metrics
    # what the run is: its data (the test split the demo scored, too), tags and description
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                for i in run.inputs.dataset_inputs}  # fmt: skip
    assert set(contexts) == {"training", "validation", "testing"}
    assert json.loads(contexts["testing"].profile)["items"] == datalist["numTest"]
    assert (run.data.tags["data_source"], run.data.tags["method"]) == ("dicom", "sum")
    assert run.data.tags["mlflow.note.content"].startswith("Training of seg,cls with sum")
    assert "system/cpu_utilization_percentage" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert "model.pt" in artifacts
    assert any(path.startswith("config_") for path in artifacts)
    # Nothing of the DICOM export's identities in the prepared data, checkpoints, MLflow store
    # and artifacts (eval/mlruns).
    for output in ("data", "models", "eval"):
        assert_no_phi(run_dir / output, run_dir / "export", code_artifacts=True)
    assert list((run_dir / "eval" / "mlruns").rglob("model.pt"))

    # A second demo reuses the identical phantom and adds a second run.
    assert main(["demo", "--out", str(run_dir), "--n", "24", "--epochs", "1",
                 "--image-size", "64", "--batch-size", "4", "--workers", "1"]) == 0  # fmt: skip
    assert "reusing" in capfd.readouterr().out
