"""The reader checks what it derives before allocating, and valid-but-odd files still read."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_helpers import PATIENT, REGION, SPACING, cine, smooth_frame
from pydicom.dataelem import RawDataElement

from thyroid_monai.io.dicom import DicomReadError, read_ultrasound
from thyroid_monai.io.dicom_write import ultrasound_dataset, write_ultrasound_dicom
from thyroid_monai.io.errors import safe_reason


def _cine_dataset(frames: int = 3) -> pydicom.Dataset:
    return ultrasound_dataset(cine(frames), regions=[REGION], spacing_mm=SPACING, patient=PATIENT)


def _save(ds: pydicom.Dataset, name: str) -> str:
    ds.save_as(name, enforce_file_format=True)
    return name


@pytest.mark.parametrize(("value", "problem"), [
    (-1, "NumberOfFrames"), (0, "NumberOfFrames"), (10**9, "too short"), (4, "too short"),
])  # fmt: skip
def test_frame_counts_that_the_pixel_data_cannot_hold_are_rejected(value, problem):
    ds = _cine_dataset()
    ds.NumberOfFrames = value
    with pytest.raises(DicomReadError, match=problem):
        read_ultrasound(_save(ds, "cine.dcm"), frames="all")


def test_empty_number_of_frames_reads_one_frame_and_excess_pixel_data_is_refused():
    ds = ultrasound_dataset(smooth_frame(), regions=[REGION], spacing_mm=SPACING, patient=PATIENT)
    ds.NumberOfFrames = None
    assert len(read_ultrasound(_save(ds, "single.dcm")).frames) == 1
    ds.PixelData = ds.PixelData + b"\x00" * 64
    with pytest.raises(DicomReadError, match="longer"):
        read_ultrasound(_save(ds, "long.dcm"))


def test_encapsulated_frame_count_is_checked_against_the_fragments():
    path = write_ultrasound_dicom("rle.dcm", cine(2), transfer_syntax="rle", regions=[REGION],
                                  spacing_mm=SPACING, patient=PATIENT)  # fmt: skip
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 10**9
    with pytest.raises(DicomReadError, match="fragments"):
        read_ultrasound(_save(ds, "huge.dcm"), frames="all")


@pytest.mark.parametrize("bounds", [(-5, 12, 71, 59), (8, 12, 200, 59), (8, 12, 71, 900)])
def test_region_bounds_must_be_non_negative_and_inside_the_image(bounds):
    ds = ultrasound_dataset(smooth_frame(), regions=[REGION], spacing_mm=SPACING, patient=PATIENT)
    item = ds.SequenceOfUltrasoundRegions[0]
    item["RegionLocationMinX0"].VR = "SL"
    (item.RegionLocationMinX0, item.RegionLocationMinY0, item.RegionLocationMaxX1,
     item.RegionLocationMaxY1) = bounds  # fmt: skip
    with pytest.raises(DicomReadError, match="region"):
        read_ultrasound(_save(ds, "region.dcm"))


@pytest.mark.parametrize("delta_cm", [5e-323, 1e6, float("inf")])
def test_spacing_outside_the_physical_range_is_rejected(delta_cm):
    ds = ultrasound_dataset(smooth_frame(), regions=[REGION], spacing_mm=SPACING, patient=PATIENT)
    ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaX = delta_cm
    with pytest.raises(DicomReadError, match="physical range"):
        read_ultrasound(_save(ds, "spacing.dcm"))


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
def test_messages_never_carry_element_values():
    ds = ultrasound_dataset(smooth_frame(), regions=[REGION], spacing_mm=SPACING, patient=PATIENT)
    tag = pydicom.tag.Tag("NumberOfFrames")  # raw bytes: pydicom refuses to set such a value
    ds[tag] = RawDataElement(tag, "IS", 6, b"GARCIA", 0, False, True)
    with pytest.raises(DicomReadError) as caught:
        read_ultrasound(_save(ds, "named.dcm"))
    assert "GARCIA" not in str(caught.value)
    assert safe_reason(ValueError("invalid literal for int(): 'GARCIA^ANA'")) == "ValueError"
    assert safe_reason(OSError("disk full")) == "OSError: disk full"


def test_cropped_frames_match_after_the_checks():
    frames = cine(3)
    image = read_ultrasound(_save(_cine_dataset(), "ok.dcm"), frames="all")
    min_x, min_y, max_x, max_y = REGION
    np.testing.assert_array_equal(
        np.stack([f.image for f in image.frames]), frames[:, min_y : max_y + 1, min_x : max_x + 1]
    )
