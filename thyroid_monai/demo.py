"""The demo: phantom -> DICOM export -> ``prep dicom`` (de-identified) -> training -> test scores.

``thyroid-monai demo`` parses its options into :class:`DemoOptions` and calls :func:`run_demo`,
which prints each step and the held-out test scores, and logs those to the MLflow run.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from thyroid_monai.synthetic import PhantomConfig

DEMO_SALT = "thyroid-monai-demo"
"""Salt of the demo's de-identification (fake patients only; real data needs a secret salt)."""
DEMO_FOLDS = 5
DEMO_TEST_FRACTION = 0.2
EXPERIMENT = "thyroid_us_multitask"


@dataclass(frozen=True)
class DemoOptions:
    """What the demo runs: the run folder, the phantom's size and the training budget."""

    # 600 images at 64 px for 12 epochs learn the level in about the time 240 images at 128 px
    # took for 10 epochs (docs/level.md: data size matters more than resolution on a CPU budget)
    out: Path = Path("runs/demo")
    """Run folder (export, data, checkpoints, MLflow store)."""
    images: int = 600
    """Phantom images."""
    epochs: int = 12
    image_size: int = 64
    """Network input size (square)."""
    batch_size: int = 8
    seed: int = 0
    workers: int = 2
    """Conversion processes."""


def check_demo_capacity(options: DemoOptions) -> None:
    """Checks that the phantom has patients enough for the demo's folds and test set.

    Raises:
        ValueError: If it has too few (the message says how many it gives).
    """
    from data_prep.phantom import phantom_patients
    from data_prep.splits import check_fold_capacity
    from thyroid_monai.synthetic import PhantomConfig

    patients = phantom_patients(options.images, PhantomConfig(seed=options.seed))
    check_fold_capacity(patients, DEMO_FOLDS, DEMO_TEST_FRACTION)


def prepare_demo_data(run_dir: Path, count: int, config: PhantomConfig, workers: int) -> Path:
    """Phantom -> DICOM export (fake identities burned in) -> ``prep dicom`` -> PHI audit.

    Returns:
        The prepared dataset folder (``run_dir/data``).

    Raises:
        RuntimeError: If nothing was converted or the audit found identifying information.
    """
    from data_prep.audit import audit_folder
    from data_prep.phantom_dicom import export_is_current, export_phantom_dicom
    from data_prep.sources import SOURCES, ConvertOptions, convert_source
    from data_prep.sources.dicom import DicomOptions

    export, data_dir = run_dir / "export", run_dir / "data"
    if export_is_current(export, count, config):
        print(f"      reusing the DICOM export in {export}")
    else:
        export_phantom_dicom(export, count, config)
    print(f"[2/4] prep dicom (de-identified, cropped to the tissue region) -> {data_dir}")
    convert = ConvertOptions(
        input=export, out=data_dir, folds=DEMO_FOLDS, test_fraction=DEMO_TEST_FRACTION,
        seed=config.seed, workers=workers, progress=False,
    )  # fmt: skip
    options = DicomOptions(labels=export / "labels.csv", salt=DEMO_SALT)
    result = convert_source(SOURCES["dicom"], convert, options)
    if not result.ok or result.datalist is None:
        raise RuntimeError(f"prep dicom converted nothing from {export}; see rejected.csv")
    report = audit_folder(data_dir)
    if not report.passed:
        raise RuntimeError(f"PHI audit of {data_dir} failed: {report.problems[:3]}")
    print(
        f"      {result.samples} images ({result.reused} reused), {len(result.rejected)} rejected;"
        f" audit passed on {report.dicom_files} DICOM and {report.nifti_files} NIfTI files"
    )
    return data_dir


def _train_and_evaluate(options: DemoOptions, data_dir: Path, run_name: str) -> dict[str, float]:
    """Trains through the bundle (tracked), evaluates the best checkpoint; the test metrics."""
    from thyroid_monai.workflows import read_metrics_csv, run_bundle

    run_dir = options.out
    shutil.rmtree(run_dir / "models", ignore_errors=True)  # checkpoints of an earlier demo
    common = {
        "image_size": [options.image_size, options.image_size],
        "batch_size": options.batch_size,
        "seed": options.seed,
    }
    print(f"[3/4] training {options.epochs} epochs through the bundle (MLflow run '{run_name}')")
    run_bundle(
        ["train.yaml", "progress.yaml"],
        run_dir=run_dir,
        dataset_dir=data_dir,
        quiet=True,
        overrides={**common, "max_epochs": options.epochs, "run_name": run_name},
    )
    print("[4/4] evaluating the best checkpoint on the held-out test patients")
    run_bundle(
        ["train.yaml", "evaluate.yaml"],
        run_dir=run_dir,
        dataset_dir=data_dir,
        tracking=False,
        quiet=True,
        overrides={**common, "log_epochs": False},
    )
    return read_metrics_csv(run_dir / "eval" / "metrics.csv")


def _log_test_metrics(
    run_dir: Path, data_dir: Path, run_name: str, metrics: dict[str, float]
) -> str:
    """Adds the test metrics and split (a dataset input) to the training run; the tracking URI."""
    import mlflow

    from thyroid_monai.tracking import datalist_lineage, dataset_input
    from thyroid_monai.workflows import sqlite_uri, tracking_store

    store = tracking_store(run_dir)
    client = mlflow.MlflowClient(sqlite_uri(store))
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is None:
        raise RuntimeError(f"the training run left no MLflow experiment in {store}")
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"attributes.run_name = '{run_name}'"
    )
    run_id = runs[0].info.run_id
    for name, value in metrics.items():
        client.log_metric(run_id, name.replace("val_", "test_"), value)
    test_split = datalist_lineage(data_dir / "datalist.json", "test")
    client.log_inputs(run_id, datasets=[dataset_input(test_split)])
    return sqlite_uri(store)


def _print_results(
    options: DemoOptions, data_dir: Path, metrics: dict[str, float], run_name: str, uri: str
) -> None:
    datalist = json.loads((data_dir / "datalist.json").read_text())
    patients = len({item["patient"] for item in datalist["testing"]})
    rows: list[tuple[str, float | None]] = [
        ("Dice (nodule mask)", metrics.get("val_mean_dice")),
        ("TI-RADS accuracy (TR1-TR5)", metrics.get("val_accuracy")),
        ("TI-RADS macro-F1", metrics.get("val_macro_f1")),
    ]
    print()
    print(f"Held-out test set: {datalist['numTest']} images of {patients} patients")
    print(f"  {'metric':<30}{'value':>8}")
    for label, score in rows:
        print(f"  {label:<30}{score:>8.3f}" if score is not None else f"  {label:<30}{'n/a':>8}")
    print(f"  (chance level for 5 balanced classes is 0.200; {options.epochs} epochs on a CPU)")
    print()
    print(f"MLflow run '{run_name}' (params, tags, datasets, per-epoch losses and metrics, "
          "system metrics, checkpoint, the registered model):")  # fmt: skip
    print(f"  mlflow ui --backend-store-uri {uri} --port 5000")


def run_demo(options: DemoOptions) -> None:
    """Runs the whole demo, printing each step and the held-out test scores."""
    from thyroid_monai.synthetic import PhantomConfig

    started = time.perf_counter()
    print(f"[1/4] phantom: {options.images} images, 3 readers -> DICOM export with fake identities")
    config = PhantomConfig(seed=options.seed)
    data_dir = prepare_demo_data(options.out, options.images, config, options.workers)
    run_name = f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    metrics = _train_and_evaluate(options, data_dir, run_name)
    uri = _log_test_metrics(options.out, data_dir, run_name, metrics)
    _print_results(options, data_dir, metrics, run_name, uri)
    print(f"Done in {time.perf_counter() - started:.0f} s.")
