"""Writes a phantom dataset: NIfTI images and masks, and a MONAI datalist with folds.

Layout of the output folder::

    datalist.json                       header, "training" items with folds, "testing" items
    images/P00001_1.nii.gz              B-mode tissue image (uint8), spacing in the header
    labels/P00001_1.nii.gz              consensus mask of the readers
    labels_true/P00001_1.nii.gz         the phantom's true nodule mask
    labels_readers/P00001_1_reader1.nii.gz ...   one mask per reader

Patients are rendered independently (in a process pool when ``workers > 1``) and every file is
written atomically, so the output is byte-identical for a seed whatever the number of workers.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import thyroid_monai
from data_prep.datalist import write_datalist
from data_prep.splits import assign_folds, check_fold_capacity, split_holdout
from thyroid_monai import keys
from thyroid_monai.io.nifti import write_nifti_2d
from thyroid_monai.synthetic import Phantom, PhantomCase, PhantomConfig

_worker_phantom: Phantom | None = None


def case_item(case: PhantomCase) -> dict[str, Any]:
    """The datalist item of one case (paths relative to the dataset folder)."""
    readers = [a.reader for a in case.annotations]
    return {
        keys.IMAGE: f"images/{case.case_id}.nii.gz",
        keys.LABEL: f"labels/{case.case_id}.nii.gz",
        keys.LABEL_TRUE: f"labels_true/{case.case_id}.nii.gz",
        keys.LABEL_READERS: [f"labels_readers/{case.case_id}_{r}.nii.gz" for r in readers],
        keys.TIRADS: case.majority,
        keys.TIRADS_TRUE: case.level,
        keys.TIRADS_READERS: [a.level for a in case.annotations],
        keys.DESCRIPTORS: case.descriptors.to_dict(),
        keys.DESCRIPTORS_READERS: [a.descriptors.to_dict() for a in case.annotations],
        keys.TIRADS_POINTS: {
            "composition": case.points.composition,
            "echogenicity": case.points.echogenicity,
            "shape": case.points.shape,
            "margin": case.points.margin,
            "foci": case.points.foci,
            "total": case.points.total,
        },
        keys.SPACING: [case.spacing_mm[0], case.spacing_mm[1]],
        keys.NODULE_SIZE: case.nodule_size_mm(),
        keys.PATIENT: case.patient,
        keys.CASE_ID: case.case_id,
        keys.SOURCE: "phantom",
    }


def write_case(case: PhantomCase, out_dir: Path) -> dict[str, Any]:
    """Writes one case's NIfTI files and returns its datalist item."""
    item = case_item(case)
    spacing = case.spacing_mm
    write_nifti_2d(out_dir / item[keys.IMAGE], case.image, spacing, description="phantom image")
    write_nifti_2d(out_dir / item[keys.LABEL], case.consensus.astype("uint8"), spacing)
    write_nifti_2d(out_dir / item[keys.LABEL_TRUE], case.mask.astype("uint8"), spacing)
    for path, annotation in zip(item[keys.LABEL_READERS], case.annotations, strict=True):
        write_nifti_2d(out_dir / path, annotation.mask.astype("uint8"), spacing)
    return item


def _init_worker(config: PhantomConfig) -> None:
    global _worker_phantom
    _worker_phantom = Phantom(config)


def _write_patient(task: tuple[int, int, str]) -> list[dict[str, Any]]:
    index, views, out_dir = task
    assert _worker_phantom is not None
    return [write_case(case, Path(out_dir)) for case in _worker_phantom.patient(index, views)]


def phantom_patients(count: int, config: PhantomConfig) -> int:
    """Patients a phantom dataset of ``count`` images has (``images_per_patient`` views each)."""
    return -(-count // config.images_per_patient)


def _patient_tasks(count: int, per_patient: int, out_dir: Path) -> list[tuple[int, int, str]]:
    patients = -(-count // per_patient)
    return [(i, min(per_patient, count - i * per_patient), str(out_dir)) for i in range(patients)]


def _run(
    tasks: list[tuple[int, int, str]], config: PhantomConfig, workers: int
) -> Iterator[list[dict[str, Any]]]:
    if workers <= 1:
        _init_worker(config)
        yield from map(_write_patient, tasks)
        return
    with ProcessPoolExecutor(workers, initializer=_init_worker, initargs=(config,)) as pool:
        yield from pool.map(_write_patient, tasks, chunksize=4)


def write_phantom_dataset(
    out_dir: str | Path,
    count: int,
    config: PhantomConfig,
    *,
    folds: int = 5,
    test_fraction: float = 0.2,
    workers: int = 1,
    progress: bool = True,
) -> Path:
    """Renders ``count`` images and writes them with a datalist.

    Args:
        out_dir: Output folder (created).
        count: Number of images.
        config: Phantom definition (seed, readers, variability, class mix...).
        folds: Patient-level cross-validation folds over the training items.
        test_fraction: Share of patients held out as ``"testing"`` (stratified by level).
        workers: Processes rendering patients in parallel.
        progress: Show a progress bar.

    Returns:
        Path of ``datalist.json``.
    """
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    check_fold_capacity(phantom_patients(count, config), folds, test_fraction)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = _patient_tasks(count, config.images_per_patient, out)
    items: list[dict[str, Any]] = []
    with tqdm(total=count, desc="synthesising", unit="img", disable=not progress) as bar:
        for patient_items in _run(tasks, config, workers):
            items.extend(patient_items)
            bar.update(len(patient_items))
    training, testing = split_holdout(items, fraction=test_fraction, seed=config.seed)
    training = assign_folds(training, folds=folds, seed=config.seed)
    phantom = Phantom(config)
    header = {
        "name": "thyroid-phantom",
        "description": "Synthetic thyroid ultrasound phantom with ACR descriptors and readers",
        "generator": f"thyroid_monai {thyroid_monai.__version__}",
        "source": "phantom",
        keys.TIRADS_SCHEME: "acr",
        "labels": {"0": "background", "1": "nodule"},
        "axes": "x (lateral) first, y (depth) second; spacing [x_mm, y_mm]",
        "folds": folds,
        "phantom": config.to_dict(),
        "readers": [style.to_dict() for style in phantom.reader_styles],
    }
    return write_datalist(out / "datalist.json", header, training, testing)
