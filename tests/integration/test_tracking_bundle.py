"""A tracked bundle training: params, metrics, artifacts, the registered model and its alias."""

import json
from pathlib import Path

import mlflow
import pytest
from monai.bundle import ConfigWorkflow

from data_prep.phantom import write_phantom_dataset
from thyroid_monai.inference import load_model
from thyroid_monai.io.checkpoints import RUN_CONFIG
from thyroid_monai.networks import MultitaskUNet
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.workflows import default_bundle_dir, run_bundle, sqlite_uri

NAME = "thyroid_us_multitask"
FIGURES = {"confusion_matrix.png", "sample_overlays.png", "gradient_diagnostics.png"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    config = PhantomConfig(seed=21, render=RenderSettings(height=64, width=64))
    write_phantom_dataset(folder, 12, config, folds=2, test_fraction=0.2, progress=False)
    return folder


def train_run(dataset, run_dir, store, name, **overrides):
    """One short tracked training into the shared store; returns its MLflow run id."""
    run_bundle(["train.yaml"], run_dir=run_dir, dataset_dir=dataset, quiet=True,
               overrides={"max_epochs": 1, "image_size": [64, 64], "batch_size": 4,
                          "run_name": name, "tracking_uri": store, **overrides})  # fmt: skip
    return json.loads((run_dir / "eval" / "mlflow_run.json").read_text(encoding="utf-8"))["run_id"]


def train(dataset, run_dir, store, name, **overrides):
    """One short tracked training into the shared store; returns its registration record."""
    run_bundle(["train.yaml"], run_dir=run_dir, dataset_dir=dataset, quiet=True,
               overrides={"max_epochs": 1, "image_size": [64, 64], "batch_size": 4,
                          "run_name": name, "tracking_uri": store, **overrides})  # fmt: skip
    return json.loads((run_dir / "eval" / "registration.json").read_text(encoding="utf-8"))


def test_tracked_runs_record_everything_and_promote_only_better_models(dataset, tmp_path,
                                                                    monkeypatch):  # fmt: skip
    store = sqlite_uri(tmp_path / "team.db")  # one store (and registry) for every run
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "1")  # a run of seconds
    first = train(dataset, tmp_path / "first", store, "first")

    client = mlflow.MlflowClient(store)
    run = client.get_run(first["run_id"])
    assert run.info.run_name == "first"
    assert run.info.status == "FINISHED"
    params = run.data.params
    # the written settings of the merged config, and the components as they describe themselves
    assert params["learning_rate"] == "0.001"
    assert params["image_size"] == "[64, 64]"
    assert params["backbone"] == "resnet18"
    assert params["batch_size"] == "4"
    assert "network" not in params  # an expression: derived, not a setting
    assert params["tasks.learned"] == "seg,cls"
    assert params["tasks.num_classes"] == "5"
    assert params["tasks.selection_metric"] == "val_mean_dice"
    assert params["gradient_method.name"] == "sum"
    assert params["rlar"] == "off"
    # options whose defaults live in the classes are recorded too
    assert params["network_def.dropout"] == "0.1"
    assert params["network_def.level_pooling"] == "nodule"  # auto, resolved by the network
    assert params["loss.level_loss"] == "ce"
    assert params["optimizer.weight_decay"] == "0.0001"
    assert params["train.trainer.level_guide_epochs"] == "4"
    assert not [key for key in params if key.endswith("._target_")]
    assert max(len(value) for value in params.values()) <= 500
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_seg")] == [1]
    assert len(client.get_metric_history(run.info.run_id, "val_mean_dice")) == 1
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert FIGURES | {"model.pt"} <= artifacts
    assert any(p.startswith("config_") and p.endswith(".json") for p in artifacts)
    for figure in FIGURES:
        local = client.download_artifacts(run.info.run_id, figure, str(tmp_path / "back"))
        assert Path(local).read_bytes().startswith(b"\x89PNG")
    # system metrics were sampled while it trained
    assert "system/cpu_utilization_percentage" in run.data.metrics
    assert "system/system_memory_usage_megabytes" in run.data.metrics

    # the best checkpoint was registered from this run and became the champion
    assert (first["version"], first["promoted"]) == ("1", True)
    assert first["metric"] == pytest.approx(run.data.metrics["val_mean_dice"])
    champion = client.get_model_version_by_alias(NAME, "champion")
    assert (str(champion.version), champion.run_id) == ("1", run.info.run_id)
    with monkeypatch.context() as scoped:  # the runs below get their store from the config
        scoped.setenv("MLFLOW_TRACKING_URI", store)
        champion_model = load_model(f"models:/{NAME}@champion", trust=True)
        info = mlflow.models.get_model_info(f"models:/{NAME}/1")
    assert isinstance(champion_model.network, MultitaskUNet)
    assert champion_model.image_size == (64, 64)
    # a servable pyfunc: images of any size in, with a request example MLflow validated
    assert info.signature.inputs.inputs[0].shape == (-1, -1, -1)
    assert info.saved_input_example_info is not None

    # Two more runs with other learning rates. Which one scores higher after one epoch at 64x64
    # depends on the platform's arithmetic, so the expected alias moves are derived from the
    # recorded metrics: a version takes the alias exactly when it beats the champion so far.
    worse = train(dataset, tmp_path / "worse", store, "worse", learning_rate=0.01)
    better = train(dataset, tmp_path / "better", store, "better", learning_rate=0.0)
    champion, best = "1", first["metric"]
    for version, outcome in (("2", worse), ("3", better)):
        assert outcome["version"] == version
        assert outcome["previous_champion"] == champion
        assert outcome["promoted"] == (outcome["metric"] > best)
        if outcome["promoted"]:
            champion, best = version, outcome["metric"]
    assert str(client.get_model_version_by_alias(NAME, "champion").version) == champion
    versions = {str(v.version): v for v in client.search_model_versions(f"name='{NAME}'")}
    assert float(versions["2"].tags["val_mean_dice"]) == pytest.approx(worse["metric"])


def test_a_tracked_runs_record_evaluates_with_tracking_from_any_folder(dataset, tmp_path,
                                                                      monkeypatch):  # fmt: skip
    store = sqlite_uri(tmp_path / "team.db")
    train(dataset, tmp_path / "run", store, "recorded")
    record = json.loads((tmp_path / "run" / RUN_CONFIG).read_text())
    # the record is the training's config, not MONAI's tracking patch of it
    assert "save_execute_config" not in record
    targets = [h.get("_target_", "") for h in record["train"]["handlers"]
               + record["validate"]["handlers"] if isinstance(h, dict)]  # fmt: skip
    assert not [t for t in targets if "tracking" in t or "MLFlow" in t]
    assert Path(record["dataset_dir"]).is_absolute()
    monkeypatch.chdir(tmp_path)  # another working directory than the training's
    workflow = ConfigWorkflow(
        config_file=[str(tmp_path / "run" / RUN_CONFIG),
                     str(default_bundle_dir() / "configs" / "evaluate.yaml")],
        tracking=str(default_bundle_dir() / "configs" / "tracking.yaml"),
        workflow_type=None, logging_file=False, tracking_uri=store,
    )  # fmt: skip
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    assert (tmp_path / "run" / "eval" / "metrics.csv").is_file()
    assert list((tmp_path / "run" / "eval").glob("config_*.json"))  # this evaluation's copy
    assert not [p for p in tmp_path.rglob("*") if "$" in p.name]
    runs = mlflow.MlflowClient(store).search_runs(
        [mlflow.MlflowClient(store).get_experiment_by_name(NAME).experiment_id]
    )
    assert len(runs) == 2  # the training and the evaluation, one handler each
    evaluation = next(r for r in runs if r.data.tags["mlflow.note.content"].startswith("Eval"))
    (tested,) = evaluation.inputs.dataset_inputs  # the held-out split it scored
    assert {t.key: t.value for t in tested.tags}["mlflow.data.context"] == "testing"
    assert evaluation.data.tags["method"] == "sum"


def test_a_runs_data_tags_and_description_read_back(dataset, tmp_path):
    """Two runs on the same data show the same dataset digests; the tags say what ran."""
    store = sqlite_uri(tmp_path / "team.db")
    no_metrics = {"tracking_system_metrics": False, "register_model": False}
    first = train_run(dataset, tmp_path / "a", store, "a", **no_metrics)
    second = train_run(dataset, tmp_path / "b", store, "b", use_rlar=True, **no_metrics)
    client = mlflow.MlflowClient(store)
    runs = [client.get_run(run_id) for run_id in (first, second)]

    inputs = {}
    for run in runs:
        assert not [key for key in run.data.metrics if key.startswith("system/")]  # switched off
        inputs[run.info.run_id] = {
            next(t.value for t in entry.tags if t.key == "mlflow.data.context"): entry
            for entry in run.inputs.dataset_inputs
        }
    training, validation = inputs[first]["training"], inputs[first]["validation"]
    assert set(inputs[first]) == {"training", "validation"}
    assert training.dataset.name == "thyroid-phantom_train_fold0"
    assert json.loads(training.dataset.source)["uri"] == str((dataset / "datalist.json").resolve())
    assert training.dataset.digest != validation.dataset.digest
    profile = json.loads(training.dataset.profile)
    assert profile["source"] == "phantom"
    assert profile["items"] + json.loads(validation.dataset.profile)["items"] == json.loads(
        (dataset / "datalist.json").read_text())["numTraining"]  # fmt: skip
    tags = {t.key: t.value for t in training.tags}
    assert (tags["split"], tags["fold"], tags["source"]) == ("train", "0", "phantom")
    # the same data: the same digests in both runs
    for context in ("training", "validation"):
        assert inputs[second][context].dataset.digest == inputs[first][context].dataset.digest

    tags = runs[0].data.tags
    assert tags["method"] == "sum"
    assert runs[1].data.tags["method"] == "sum+rlar"
    assert tags["tasks"] == "seg,cls"
    assert (tags["backbone"], tags["image_size"]) == ("resnet18", "64x64")
    assert (tags["tirads_scheme"], tags["label_grouping"]) == ("acr", "acr5")
    assert (tags["data_source"], tags["reader_mode"]) == ("phantom", "consensus")
    assert tags["git_commit"] == tags["mlflow.source.git.commit"]
    assert len(tags["git_commit"]) == 40 or tags["git_commit"] == "unknown"
    description = tags["mlflow.note.content"]
    assert "\n" not in description
    assert description.startswith("Training of seg,cls with sum, resnet18 at 64x64 px")
    assert "thyroid-phantom (phantom) fold 0" in description
    # a run of the same data with another method is found by its tags
    experiment = client.get_experiment_by_name(NAME).experiment_id
    found = client.search_runs([experiment], filter_string="tags.method = 'sum+rlar'")
    assert [run.info.run_id for run in found] == [second]
