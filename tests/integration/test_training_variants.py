"""The bundle trains every model variant for a short epoch on a phantom and tracks it in MLflow.

Variants: mask only, level only, multitask (weighted sum), + radiomics-guided embedding,
+ radiomics + RLAR. Then the multitask run is evaluated on the held-out items (side-by-side report
against readers and truth) and resumed from its checkpoint for a second epoch.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest

from data_prep.phantom import write_phantom_dataset
from thyroid_monai import keys
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.synthetic import PhantomConfig, RenderSettings
from thyroid_monai.workflows import (
    BundleRunError,
    read_metrics_csv,
    run_bundle,
    sqlite_uri,
    tracking_store,
)

FEATURES = ["area_mm2", "depth_to_width", "mean_intensity", "intensity_std"]


def mask_features(dataset: Path, item: dict) -> list[float]:
    """Simple radiomics-like features of the consensus mask (stand-ins for the real targets)."""
    image, _ = read_nifti_2d(dataset / item[keys.IMAGE])
    mask, spacing = read_nifti_2d(dataset / item[keys.LABEL])
    inside = mask > 0
    rows, cols = np.nonzero(inside)
    depth, width = (np.ptp(rows) + 1) * spacing[1], (np.ptp(cols) + 1) * spacing[0]
    area = inside.sum() * spacing[0] * spacing[1]
    return [
        float(area),
        float(depth / width),
        float(image[inside].mean()),
        float(image[inside].std()),
    ]


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 phantom images (64x64) with standardised radiomics targets, one feature missing per
    second view, as the data-preparation step will provide them."""
    dataset = tmp_path_factory.mktemp("phantom")
    config = PhantomConfig(seed=3, render=RenderSettings(height=64, width=64))
    datalist = write_phantom_dataset(
        dataset, 12, config, folds=3, test_fraction=0.34, progress=False
    )
    payload = json.loads(datalist.read_text())
    items = payload["training"] + payload["testing"]
    values = np.array([mask_features(dataset, item) for item in items])
    standardised = (values - values.mean(axis=0)) / (values.std(axis=0) + 1e-6)
    for item, row in zip(items, standardised.tolist(), strict=True):
        if item[keys.CASE_ID].endswith("_2"):
            row[1] = None
        item[keys.RADIOMICS] = row
    payload[keys.RADIOMICS] = {"features": FEATURES, "standardisation": "z-score"}
    datalist.write_text(json.dumps(payload))
    return dataset


COMMON = {"max_epochs": 1, "image_size": [64, 64], "batch_size": 4, "log_iterations": False}
VARIANTS = {
    "mask_only": {"use_level": False},
    "level_only": {"use_mask": False},
    "multitask_sum": {},
    "radiomics": {"use_radiomics": True},
    "radiomics_rlar": {"use_radiomics": True, "use_rlar": True, "rlar#warmup_epochs": 0},
    "acr_route": {
        "use_descriptors": True,
        "tasks#level_from": "both",
        "train#trainer#level_guide_epochs": 2,
    },
}
EXPECTED = {
    "mask_only": ({"train_loss_seg", "val_mean_dice", "val_mean_dice_truth", "val_hd95_mm"},
                  {"train_loss_cls", "val_accuracy"}),
    "level_only": ({"train_loss_cls", "val_macro_f1", "val_accuracy_truth", "val_qwk", "val_ece"},
                   {"train_loss_seg", "val_mean_dice"}),
    "multitask_sum": ({"train_loss_seg", "train_loss_cls", "val_mean_dice", "val_auc"},
                      {"train_loss_rad", "train_rlar_penalty"}),
    "radiomics": ({"train_loss_rad", "train_weight_rad"}, {"train_rlar_penalty"}),
    "radiomics_rlar": ({"train_loss_rad", "train_rlar_penalty", "train_rlar_cos_mean"}, set()),
    "acr_route": ({"train_loss_cls", "train_loss_desc_margin", "val_macro_f1",
                   "val_accuracy_from_descriptors"}, {"train_loss_rad"}),
}  # fmt: skip


def only_run(run_dir: Path) -> mlflow.entities.Run:
    client = mlflow.MlflowClient(sqlite_uri(tracking_store(run_dir)))
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_each_variant_trains_and_is_tracked(phantom: Path, tmp_path: Path, variant: str) -> None:
    run_bundle(["train.yaml"], run_dir=tmp_path, dataset_dir=phantom, quiet=True,
               overrides={**COMMON, **VARIANTS[variant], "run_name": variant})  # fmt: skip
    run = only_run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == variant
    present, absent = EXPECTED[variant]
    assert present <= set(run.data.metrics), present - set(run.data.metrics)
    assert not absent & set(run.data.metrics)
    assert (tmp_path / "models" / "model.pt").is_file()
    assert (tmp_path / "eval" / "validation_report.md").is_file()
    if variant == "radiomics_rlar":
        assert run.data.params["rlar.weight"] == "0.5"
        assert run.data.params["rlar.warmup_epochs"] == "0"  # the override
        assert run.data.params["tasks.learned"] == "seg,cls,rad"


def test_evaluation_reports_readers_and_truth_side_by_side_and_training_resumes(
    phantom: Path, tmp_path: Path
) -> None:
    report_model = {**COMMON, "use_descriptors": True, "reader_mode": "sample"}
    run_bundle(["train.yaml"], run_dir=tmp_path, dataset_dir=phantom, quiet=True,
               overrides=report_model)  # fmt: skip
    run_bundle(["train.yaml", "evaluate.yaml"], run_dir=tmp_path, dataset_dir=phantom,
               tracking=False, quiet=True, overrides=report_model)  # fmt: skip
    metrics = read_metrics_csv(tmp_path / "eval" / "metrics.csv")
    for name in ("val_mean_dice", "val_mean_dice_truth", "val_accuracy", "val_accuracy_truth",
                 "val_accuracy_from_descriptors", "val_level_agreement"):  # fmt: skip
        assert 0.0 <= metrics[name] <= 1.0, name
    report = (tmp_path / "eval" / "test_report.md").read_text()
    assert "| score | readers | truth |" in report
    assert "| mean_dice |" in report

    checkpoint = tmp_path / "models" / "checkpoint_epoch=1.pt"
    run_bundle(["train.yaml"], run_dir=tmp_path, dataset_dir=phantom, quiet=True,
               overrides={**report_model, "max_epochs": 2, "resume_from": str(checkpoint),
                          "run_name": "resumed"})  # fmt: skip
    client = mlflow.MlflowClient(sqlite_uri(tracking_store(tmp_path)))
    experiment = client.get_experiment_by_name("thyroid_us_multitask")
    (resumed,) = client.search_runs(
        [experiment.experiment_id], filter_string="attributes.run_name = 'resumed'"
    )
    history = client.get_metric_history(resumed.info.run_id, "train_loss")
    assert [m.step for m in history] == [2]  # only the second epoch was trained
    assert (tmp_path / "models" / "checkpoint_epoch=2.pt").is_file()


def mixed_copy(phantom: Path, destination: Path, *, neither: bool = False) -> Path:
    """A copy of the phantom whose training items lack the mask (every third) or the level."""
    data = destination / "data"
    shutil.copytree(phantom, data)
    payload = json.loads((data / "datalist.json").read_text())
    for index, item in enumerate(payload["training"]):
        if index % 3 == 0 or (neither and index == 1):
            for key in (keys.LABEL, keys.LABEL_READERS):
                item.pop(key, None)
        if index % 3 == 1:
            for key in (keys.TIRADS, keys.TIRADS_READERS):
                item.pop(key, None)
    (data / "datalist.json").write_text(json.dumps(payload))
    return data


def test_items_with_only_a_mask_or_only_a_level_train_the_task_they_have(
    phantom: Path, tmp_path: Path
) -> None:
    data = mixed_copy(phantom, tmp_path)
    run_bundle(["train.yaml"], run_dir=tmp_path / "run", dataset_dir=data, quiet=True,
               overrides={**COMMON, "max_epochs": 2})  # fmt: skip
    metrics = only_run(tmp_path / "run").data.metrics
    for name in ("train_loss_seg", "train_loss_cls", "val_mean_dice", "val_macro_f1"):
        assert np.isfinite(metrics[name]), name


def test_an_item_with_neither_mask_nor_level_is_named(phantom: Path, tmp_path: Path) -> None:
    data = mixed_copy(phantom, tmp_path, neither=True)
    case = json.loads((data / "datalist.json").read_text())["training"][1][keys.CASE_ID]
    with pytest.raises(BundleRunError, match=rf"datalist item {case} has neither a mask nor a lev"):
        run_bundle(["train.yaml"], run_dir=tmp_path / "run", dataset_dir=data, quiet=True,
                   tracking=False, overrides=COMMON)  # fmt: skip
