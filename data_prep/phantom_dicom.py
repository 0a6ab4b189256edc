"""Exports a phantom as a realistic ultrasound DICOM tree, the demo's stand-in for a scanner export.

Layout of the export folder::

    .export.json                      the phantom settings (a re-run with the same ones is skipped)
    labels.csv                        file, tirads (reader majority), ACR descriptor columns
    <patient id>/<view>.dcm           the framed image with burned-in (fake) identity, regions,
                                      identifying attributes; encodings rotate over
                                      :data:`ENCODINGS`
    <patient id>/<view>_seg.dcm       DICOM SEG of the readers' consensus mask

Paths name the (fake) medical record numbers on purpose, as real exports do; ``prep dicom``
keeps no source path when it de-identifies.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from thyroid_monai.io.dicom_write import PatientInfo, write_ultrasound_dicom
from thyroid_monai.io.files import atomic_path, write_json_atomic
from thyroid_monai.synthetic import Phantom, PhantomCase, PhantomConfig

ENCODINGS: tuple[tuple[str, str], ...] = (
    ("explicit", "MONOCHROME2"),
    ("rle", "RGB"),
    ("jpeg-baseline", "YBR_FULL_422"),
)
"""(transfer syntax, photometric interpretation) pairs, used in turn."""


def _frame_mask(case: PhantomCase) -> np.ndarray:
    """The consensus mask placed in frame coordinates (the tissue region of the frame)."""
    min_x, min_y, max_x, max_y = case.frame.region
    full = np.zeros(case.frame.image.shape, dtype=bool)
    full[min_y : max_y + 1, min_x : max_x + 1] = case.consensus > 0
    return full


def write_segmentation(path: Path, source: Path, mask: np.ndarray) -> None:
    """Writes a binary DICOM SEG of ``mask`` for the image in ``source`` (atomically)."""
    import pydicom

    from thyroid_monai.inference.outputs import nodule_segmentation

    segmentation = nodule_segmentation(  # the readers' contours: a manual segmentation
        pydicom.dcmread(source),
        mask,
        series_number=100,
        model_name="phantom readers",
        software_version="0",
    )
    with atomic_path(path) as temporary:
        segmentation.save_as(temporary)


def _settings(count: int, config: PhantomConfig) -> dict[str, Any]:
    return json.loads(json.dumps({"phantom": config.to_dict(), "count": count}))


def export_is_current(out_dir: str | Path, count: int, config: PhantomConfig) -> bool:
    """Whether ``out_dir`` already holds the export of these settings."""
    stamp = Path(out_dir) / ".export.json"
    return stamp.is_file() and json.loads(stamp.read_text()) == _settings(count, config)


def export_phantom_dicom(out_dir: str | Path, count: int, config: PhantomConfig) -> Path:
    """Renders ``count`` phantom images and writes them as a DICOM export with SEG masks.

    Returns:
        The export folder (skipped when ``.export.json`` already records the same settings).
    """
    out = Path(out_dir)
    if export_is_current(out, count, config):
        return out
    rows = []
    for index, case in enumerate(Phantom(config).cases(count)):
        text = case.frame.text
        patient = PatientInfo.fake(
            text.patient_name, text.patient_id, text.study_date, text.study_time
        )
        syntax, photometric = ENCODINGS[index % len(ENCODINGS)]
        relative = f"{text.patient_id}/view{case.view}.dcm"
        path = write_ultrasound_dicom(
            out / relative,
            case.frame.image,
            transfer_syntax=syntax,
            photometric=photometric,
            regions=[case.frame.region],
            spacing_mm=case.spacing_mm,
            patient=patient,
            instance_number=case.view,
        )
        write_segmentation(
            out / f"{text.patient_id}/view{case.view}_seg.dcm", path, _frame_mask(case)
        )
        descriptors = case.descriptors.to_dict()
        rows.append(
            {
                "file": relative,
                "tirads": case.majority,
                **{k: descriptors[k] for k in ("composition", "echogenicity", "shape", "margin")},
                "foci": ";".join(descriptors["foci"]),
            }
        )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    with atomic_path(out / "labels.csv") as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    write_json_atomic(out / ".export.json", _settings(count, config))
    return out
