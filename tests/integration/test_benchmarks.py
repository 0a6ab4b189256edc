"""The accuracy, DDTI and inference-speed benchmarks run end to end at toy settings."""

import csv
import json
from pathlib import Path

import mlflow
import pytest

BENCHMARKS = Path(__file__).parents[2] / "benchmarks"
DDTI_SAMPLE = Path(__file__).parents[3] / "shared" / "data" / "ddti_sample"


@pytest.fixture
def benchmarks(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # the scripts import each other like this
    import accuracy
    import ddti
    import inference_speed

    return accuracy, ddti, inference_speed


def read_csv(path):
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# python benchmarks/")  # the command above the table
    return list(csv.DictReader(lines[1:]))


def test_accuracy_trains_through_the_bundle_and_pairs_rlar_with_sum(benchmarks, tmp_path):
    accuracy = benchmarks[0]
    out = tmp_path / "results"
    # two runs at once, each in its own process; RLAR starts after its 1-epoch warm-up and applies
    # its penalty every 4th iteration (2 a epoch here): 3 epochs reach iteration 5
    accuracy.main(["--quick", "--methods", "sum", "rlar", "--variability", "strong", "--seeds",
                   "0", "--epochs", "3", "--images", "30", "--work", str(tmp_path / "work"),
                   "--out", str(out), "--name", "toy", "--jobs", "2"])  # fmt: skip
    runs = read_csv(out / "toy_runs.csv")
    assert {(r["method"], r["fold"]) for r in runs} == {
        (m, f) for m in ("sum", "rlar") for f in ("0", "1")
    }
    assert all(0.0 <= float(r["dice"]) <= 1.0 and r["macro_f1"] != "" for r in runs)
    summary = read_csv(out / "toy.csv")
    assert {r["method"] for r in summary} == {"sum", "rlar"}
    paired = read_csv(out / "toy_paired.csv")
    assert {r["metric"] for r in paired} == set(accuracy.METRICS)
    assert {(r["challenger"], r["reference"]) for r in paired} == {("rlar", "sum")}
    assert all(r["pairs"] == "2" for r in paired)
    # the RLAR runs say whether the penalty was active (cosines at the shared latent)
    activity = read_csv(out / "toy_rlar_activity.csv")
    assert [(r["method"], r["runs"]) for r in activity] == [("rlar", "2")]
    assert -1.0 <= float(activity[0]["rlar_cos_mean"]) <= 1.0
    table = (out / "toy.md").read_text()
    assert "Produced by: `python benchmarks/accuracy.py --quick" in table
    assert "Was the RLAR penalty active?" in table
    assert (out / "toy.png").read_bytes().startswith(b"\x89PNG")
    # Every run is in the study's MLflow experiment, comparable by its tags.
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("benchmark_toy").experiment_id
    logged = client.search_runs([experiment])
    assert sorted((r.data.tags["method"], r.data.tags["fold"]) for r in logged) == sorted(
        (m, f) for m in ("sum", "rlar") for f in ("0", "1"))  # fmt: skip
    rlar = client.search_runs([experiment], "tags.method = 'rlar' and tags.fold = '0'")[0]
    csv_row = next(r for r in runs if (r["method"], r["fold"]) == ("rlar", "0"))
    assert rlar.data.metrics["test_dice"] == pytest.approx(float(csv_row["dice"]))
    assert rlar.data.tags["gradient_method"] == "sum+rlar"
    assert (rlar.data.tags["variability"], rlar.data.tags["study"]) == ("strong", "toy")
    assert rlar.data.tags["mlflow.note.content"].startswith("toy: rlar on strong reader")
    contexts = {next(t.value for t in i.tags if t.key == "mlflow.data.context"): i.dataset
                for i in rlar.inputs.dataset_inputs}  # fmt: skip
    assert set(contexts) == {"training", "testing"}
    same_fold_sum = client.search_runs([experiment], "tags.method = 'sum' and tags.fold = '0'")[0]
    assert {i.dataset.digest for i in same_fold_sum.inputs.dataset_inputs} == {
        d.digest for d in contexts.values()}  # fmt: skip
    # A second invocation reuses every finished run instead of training again.
    scores = tmp_path / "work" / "runs" / "strong" / "sum" / "seed0_fold0" / "scores.json"
    before = scores.stat().st_mtime_ns
    accuracy.main(["--quick", "--methods", "sum", "rlar", "--variability", "strong", "--seeds",
                   "0", "--epochs", "3", "--images", "30", "--work", str(tmp_path / "work"),
                   "--out", str(out), "--name", "toy"])  # fmt: skip
    assert scores.stat().st_mtime_ns == before
    assert len(client.search_runs([experiment])) == 4  # nor logging them again
    # ...but not runs trained with other settings: they would enter the table as these.
    with pytest.raises(ValueError, match=r"seed0_fold0: max_epochs 3 instead of 2") as refused:
        accuracy.main(["--quick", "--methods", "sum", "--variability", "strong", "--seeds", "0",
                       "--epochs", "2", "--images", "30", "--work", str(tmp_path / "work"),
                       "--out", str(out), "--name", "toy"])  # fmt: skip
    assert "2 finished run(s)" in str(refused.value)  # both folds, named
    assert scores.stat().st_mtime_ns == before


def test_level_only_runs_have_no_mask_scores(benchmarks):
    accuracy = benchmarks[0]
    scores = accuracy.truth_scores({"val_macro_f1_truth": 0.4, "val_qwk_truth": float("nan")})
    assert scores["dice"] is None
    assert scores["qwk"] is None
    assert scores["macro_f1"] == 0.4


@pytest.mark.skipif(not DDTI_SAMPLE.is_dir(), reason=f"DDTI sample not found at {DDTI_SAMPLE}")
def test_ddti_recipe_prepares_trains_and_evaluates_the_sample(benchmarks, tmp_path):
    ddti = benchmarks[1]
    out = tmp_path / "results"
    ddti.main(["--ddti", str(DDTI_SAMPLE), "--quick", "--methods", "sum", "--folds", "2",
               "--epochs", "1", "--image-size", "64", "--test-fraction", "0.25",
               "--work", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    datalist = json.loads((tmp_path / "work" / "data" / "datalist.json").read_text())
    assert datalist["testing"], "the recipe holds out test patients"
    runs = read_csv(out / "ddti_quick_runs.csv")
    assert [(r["method"], r["fold"]) for r in runs] == [("sum", "0"), ("sum", "1")]
    assert all(r["dice"] != "" and r["accuracy"] != "" for r in runs)
    assert "Produced by: `python benchmarks/ddti.py" in (out / "ddti_quick.md").read_text()
    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'work' / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("benchmark_ddti_quick").experiment_id
    logged = client.search_runs([experiment], order_by=["tags.fold"])
    assert [(r.data.tags["method"], r.data.tags["fold"]) for r in logged] == [
        ("sum", "0"), ("sum", "1")]  # fmt: skip
    assert logged[0].data.tags["tirads_scheme"] == "kwak"
    assert logged[0].data.tags["data_source"] == datalist["source"]
    assert logged[0].data.metrics["test_dice"] == pytest.approx(float(runs[0]["dice"]))
    # finished runs are reused only with the settings they were trained with
    with pytest.raises(ValueError, match=r"2 finished run\(s\) .* other settings.*\n.*"
                       r"seed0_fold0: max_epochs 1 instead of 2"):  # fmt: skip
        ddti.main(["--ddti", str(DDTI_SAMPLE), "--quick", "--methods", "sum", "--folds", "2",
                   "--epochs", "2", "--image-size", "64", "--test-fraction", "0.25",
                   "--work", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip


def test_ddti_recipe_refuses_a_folder_that_is_not_ddti(benchmarks, tmp_path):
    with pytest.raises(SystemExit):
        benchmarks[1].main(["--ddti", str(tmp_path), "--quick"])


def test_inference_speed_compares_multitask_with_segmentation_only(benchmarks, tmp_path):
    out = tmp_path / "inference_speed.json"
    report = benchmarks[2].main(["--quick", "--rounds", "1", "--size", "32", "--backbone",
                                 "resnet10", "--out", str(out)])  # fmt: skip
    assert json.loads(out.read_text()) == report
    for batch in ("batch_1", "batch_16"):
        result = report["results"][batch]
        assert result["multitask"]["images_per_second"] > 0
        assert result["multitask_to_segmentation_time_ratio"] > 0
    assert report["parameters"]["multitask"] > report["parameters"]["segmentation_only"]


def test_fold_count_sets_the_folds_each_run_trains_on(benchmarks, tmp_path):
    accuracy = benchmarks[0]
    parse = accuracy.command_line().parse_args
    settings = accuracy.chosen_settings(
        parse(["--quick", "--images", "60", "--fold-count", "5", "--seeds", "3"])
    )
    assert (settings.folds, settings.images, settings.seeds) == (5, 60, (3,))
    assert accuracy.chosen_settings(parse(["--quick"])) == accuracy.QUICK
    # the quick table: both ends of reader variability; the middle preset on request
    assert accuracy.QUICK.variabilities == ("none", "strong")
    chosen = accuracy.chosen_settings(parse(["--quick", "--variability", "moderate"]))
    assert chosen.variabilities == ("moderate",)
    # the datalist the benchmark writes holds the K folds; the test patients do not depend on K
    written = {}
    small_k2 = accuracy.replace(settings, render_size=32, folds=2)
    for folds in (2, 5):
        tiny = accuracy.replace(small_k2, folds=folds)
        folder = accuracy.dataset(tmp_path / f"k{folds}", "none", tiny, radiomics=False)
        written[folds] = json.loads((folder / "datalist.json").read_text())
    assert {item["fold"] for item in written[5]["training"]} == set(range(5))
    assert {item["fold"] for item in written[2]["training"]} == {0, 1}
    held_out = [[item["image"] for item in written[k]["testing"]] for k in (2, 5)]
    assert held_out[0] == held_out[1]
    # a work folder's dataset is not silently reused for other settings
    with pytest.raises(ValueError, match="folds 2 instead of 5"):
        accuracy.dataset(tmp_path / "k2", "none", accuracy.replace(small_k2, folds=5), False)
    bigger = accuracy.replace(small_k2, images=90, render_size=48)
    with pytest.raises(ValueError, match="images 60 instead of 90; another phantom"):
        accuracy.dataset(tmp_path / "k2", "none", bigger, False)
    assert (
        accuracy.dataset(tmp_path / "k2", "none", small_k2, False) == tmp_path / "k2" / "data_none"
    )


def test_a_finished_run_is_checked_against_the_overrides_it_would_train_with(benchmarks, tmp_path):
    accuracy = benchmarks[0]
    run_dir = tmp_path / "seed0_fold0"
    assert accuracy.run_differences(run_dir, {"max_epochs": 12}) == [
        "no recorded config (train.json)"
    ]
    (run_dir / "configs").mkdir(parents=True)
    recorded = {"max_epochs": 12, "image_size": [64, 64], "rlar": {"warmup_epochs": 1},
                "gradient_method": {"name": "sum"}, "log_epochs": True}  # fmt: skip
    (run_dir / "configs" / "train.json").write_text(json.dumps(recorded))
    same = {"max_epochs": 12, "image_size": (64, 64), "rlar#warmup_epochs": 1,
            "gradient_method::name": "sum", "log_epochs": False}  # fmt: skip
    assert accuracy.run_differences(run_dir, same) == []  # logging does not count
    other = {**same, "rlar#warmup_epochs": 5, "gradient_method#name": "camegrad",
             "tasks#level_from": "both"}  # fmt: skip
    assert accuracy.run_differences(run_dir, other) == [
        "rlar#warmup_epochs 1 instead of 5",
        'gradient_method#name "sum" instead of "camegrad"',
        'tasks#level_from not set instead of "both"',
    ]
