"""Data-preparation speed: DICOM -> NIfTI conversion and radiomics targets, 1 and 2 workers.

Writes ``benchmarks/results/prep_speed.json``. Every speed is also given as a ratio to a
reference measured in the same run on the same images (reading each image's NIfTI and writing it
again, the least any conversion does), so results from a loaded or a quiet machine compare.

    python benchmarks/prep_speed.py            # 48 images
    python benchmarks/prep_speed.py --n 120
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from data_prep.convert import SplitOptions, convert_dataset
from data_prep.dicom import discover_dicom
from data_prep.phantom_dicom import export_phantom_dicom
from data_prep.targets import CACHE, write_radiomics_targets
from thyroid_monai.data import load_datalist
from thyroid_monai.io.deid import DeidentificationOptions
from thyroid_monai.io.nifti import read_nifti_2d, write_nifti_2d
from thyroid_monai.synthetic import PhantomConfig

from machine import describe_machine

RESULTS = Path(__file__).parent / "results" / "prep_speed.json"


def _convert(export: Path, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    cases, rejections = discover_dicom(
        export, out, labels_csv=export / "labels.csv", deid=DeidentificationOptions(salt="bench")
    )
    header = {"source": "dicom", "deidentified": True}
    convert_dataset(cases, rejections, out, header=header, split=SplitOptions(folds=2),
                    options={}, workers=workers, progress=False)  # fmt: skip
    return time.perf_counter() - started


def _targets(datalist: Path, workers: int) -> float:
    shutil.rmtree(datalist.parent / CACHE, ignore_errors=True)
    started = time.perf_counter()
    write_radiomics_targets(datalist, workers=workers, progress=False)
    return time.perf_counter() - started


def _reference(datalist: Path, scratch: Path) -> float:
    items = load_datalist(datalist)["training"] + load_datalist(datalist)["testing"]
    started = time.perf_counter()
    for index, item in enumerate(items):
        image, spacing = read_nifti_2d(datalist.parent / item["image"])
        write_nifti_2d(scratch / f"{index}.nii.gz", image, spacing)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="images")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        export = export_phantom_dicom(root / "export", args.n, PhantomConfig(seed=0))
        command = " ".join(["python benchmarks/prep_speed.py", *sys.argv[1:]])
        results: dict[str, object] = {"command": command, "images": args.n}
        for workers in (1, 2):
            seconds = _convert(export, root / "data", workers)
            results[f"dicom_to_nifti_{workers}w_images_per_s"] = round(args.n / seconds, 2)
        datalist = root / "data" / "datalist.json"
        reference = _reference(datalist, Path(tempfile.mkdtemp(dir=folder)))
        results["reference_nifti_copy_images_per_s"] = round(args.n / reference, 2)
        for workers in (1, 2):
            seconds = _targets(datalist, workers)
            results[f"radiomics_{workers}w_images_per_s"] = round(args.n / seconds, 2)
        for key in [k for k in results if k.endswith("w_images_per_s")]:
            ratio = results[key] / results["reference_nifti_copy_images_per_s"]  # type: ignore[operator]
            results[key.replace("_images_per_s", "_vs_reference")] = round(ratio, 4)
    results["machine"] = describe_machine()
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
