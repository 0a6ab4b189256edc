"""Per-image output files: overlay PNG, mask NIfTI, DICOM SEG (single-frame sources only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image

from thyroid_monai.inference.outputs import (
    build_segmentation,
    segmentation_unsupported,
    write_dicom_outputs,
    write_mask,
    write_overlay,
)
from thyroid_monai.io.deid import DeidentificationOptions, audit_dataset
from thyroid_monai.io.dicom import read_ultrasound
from thyroid_monai.io.dicom_write import PatientInfo, write_ultrasound_dicom
from thyroid_monai.io.nifti import read_nifti_2d

REGION = (4, 6, 43, 35)  # 40 columns x 30 rows of tissue
PATIENT = PatientInfo.fake("DOE^JANE", "MRN0042", "20240102", "101500")


def export(path: Path, frames: int) -> Path:
    pixels = np.random.default_rng(0).integers(0, 255, size=(frames, 48, 64)).astype(np.uint8)
    return write_ultrasound_dicom(
        path, pixels if frames > 1 else pixels[0], regions=[REGION], spacing_mm=(0.1, 0.1),
        patient=PATIENT, photometric="MONOCHROME2",
    )  # fmt: skip


def test_overlay_has_a_caption_band_and_a_red_contour(tmp_path: Path) -> None:
    image = np.full((30, 40), 100.0)
    mask = np.zeros((30, 40), dtype=bool)
    mask[10:20, 10:30] = True
    write_overlay(tmp_path / "overlay.png", image, mask, "TR4  max 12.0 mm  follow_up")
    pixels = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert pixels.shape == (30 + 16, 40, 3)
    body = pixels[16:]
    assert tuple(body[10, 15]) == (255, 40, 40)  # on the contour
    assert tuple(body[15, 20]) == (100, 100, 100)  # inside, untouched
    assert pixels[:16].any()  # the caption was drawn


def test_mask_nifti_keeps_the_spacing(tmp_path: Path) -> None:
    mask = np.zeros((5, 7), dtype=bool)
    mask[1:3, 2:5] = True
    write_mask(tmp_path / "mask.nii.gz", mask, (0.2, 0.3))
    read, spacing = read_nifti_2d(tmp_path / "mask.nii.gz")
    np.testing.assert_array_equal(read, mask.astype(np.uint8))
    assert spacing == pytest.approx((0.2, 0.3))


def test_segmentation_sits_in_the_full_frame_and_is_deidentified(tmp_path: Path) -> None:
    source = read_ultrasound(export(tmp_path / "image.dcm", 1))
    assert source.dataset is not None
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:10, 7:20] = True
    deid = DeidentificationOptions(salt="pepper")
    names = write_dicom_outputs(tmp_path / "out", source.dataset, mask, source.crop, deid=deid,
                                software_version="test")  # fmt: skip
    assert names == ("segmentation.dcm", "source.dcm")
    seg = pydicom.dcmread(tmp_path / "out" / "segmentation.dcm")
    frame = seg.pixel_array
    assert frame.shape == (48, 64)
    assert frame.sum() == mask.sum()
    assert frame[6 + 5, 4 + 7] == 1  # crop offset (min_x 4, min_y 6) added back
    assert audit_dataset(seg) == []
    assert audit_dataset(pydicom.dcmread(tmp_path / "out" / "source.dcm")) == []


def test_no_segmentation_for_a_cine(tmp_path: Path) -> None:
    cine = read_ultrasound(export(tmp_path / "cine.dcm", 3), frames="middle")
    assert cine.dataset is not None
    assert "3-frame cine" in (segmentation_unsupported(cine.dataset) or "")
    with pytest.raises(ValueError, match="cine"):
        build_segmentation(cine.dataset, np.zeros((30, 40)), cine.crop, software_version="t")
    single = read_ultrasound(export(tmp_path / "single.dcm", 1))
    assert single.dataset is not None
    assert segmentation_unsupported(single.dataset) is None


@pytest.mark.parametrize("oddity", ["retired SOP class", "no PatientName", "no PatientBirthDate",
                                    "no type 2 patient attributes"])  # fmt: skip
def test_valid_but_odd_sources_get_a_segmentation(tmp_path: Path, oddity: str) -> None:
    pixels = np.random.default_rng(1).integers(0, 255, size=(48, 64)).astype(np.uint8)
    path = write_ultrasound_dicom(
        tmp_path / "odd.dcm", pixels, regions=[REGION], spacing_mm=(0.1, 0.1), patient=PATIENT,
        photometric="MONOCHROME2", retired_sop_class=oddity == "retired SOP class",
    )  # fmt: skip
    dataset = pydicom.dcmread(path)
    absent = {
        "no PatientName": ["PatientName"],
        "no PatientBirthDate": ["PatientBirthDate"],
        "no type 2 patient attributes": ["PatientName", "PatientBirthDate", "PatientSex",
                                         "StudyDate", "StudyTime", "AccessionNumber",
                                         "ReferringPhysicianName", "StudyID"],
    }.get(oddity, [])  # fmt: skip
    for keyword in absent:
        delattr(dataset, keyword)
    dataset.save_as(path, enforce_file_format=True)
    source = read_ultrasound(path)
    assert source.dataset is not None
    mask = np.zeros((30, 40), dtype=bool)
    mask[5:10, 7:20] = True
    for deid in (DeidentificationOptions(salt="pepper"), None):
        out = tmp_path / ("deid" if deid else "kept")
        write_dicom_outputs(out, source.dataset, mask, source.crop, deid=deid,
                            software_version="test")  # fmt: skip
        seg = pydicom.dcmread(out / "segmentation.dcm")
        reference = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
        assert reference.ReferencedSOPClassUID == source.sop_class_uid  # retired stays retired
        assert int(seg.pixel_array.sum()) == int(mask.sum())
        if deid is not None:
            assert audit_dataset(seg) == []
