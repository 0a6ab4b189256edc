"""De-identification by the full Annex E table: every attribute class, SEG, file meta, pixels."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_helpers import PATIENT, REGION, SPACING, smooth_frame
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from thyroid_monai.inference.outputs import write_dicom_outputs
from thyroid_monai.io.deid import (
    UID_ROOT,
    ULTRASOUND_KEEP,
    DeidentificationOptions,
    action_for,
    audit_dataset,
    confidentiality_profile,
    deidentify,
)
from thyroid_monai.io.dicom import read_ultrasound
from thyroid_monai.io.dicom_write import write_ultrasound_dicom

BANNER = (0, 0, 83, 9)  # a graphics region over the burned-in name banner (rows 1-7)
ORIGINAL_UIDS = tuple(f"1.3.6.1.4.1.99999.7.{n}" for n in range(1, 7))
IDENTIFIERS = (
    "GARCIA", "MRN7654321", "20240315", "101530", "PHANTOM GENERAL", "HOUSE^GREGORY",
    "SONO^SAM", "STATION_AE", "RETRIEVE_AE", "SOURCE_AE", "VERIFIED", "1.3.6.1.4.1.99999",
    "NECK OF GARCIA", PATIENT.accession, PATIENT.device_serial, PATIENT.birth_date,
)  # fmt: skip


def hostile_export(path: Path) -> Path:
    """A valid US file with identity in every Annex E attribute class, and beyond the table."""
    write_ultrasound_dicom(path, smooth_frame(), regions=[REGION], spacing_mm=SPACING,
                           patient=PATIENT, overlay=True, sop_uid=ORIGINAL_UIDS[0],
                           study_uid=ORIGINAL_UIDS[1], series_uid=ORIGINAL_UIDS[2])  # fmt: skip
    ds = pydicom.dcmread(path)
    # Dates, times, AE titles and UIDs that an older, shorter table kept.
    ds.InstanceCreationDate, ds.InstanceCreationTime = "20240315", "101530"
    ds.StudyVerifiedDate = "20240315"
    ds.DateOfSecondaryCapture = "20240315"
    ds.StationAETitle, ds.RetrieveAETitle = "STATION_AE", "RETRIEVE_AE"
    ds.AcquisitionUID = ORIGINAL_UIDS[3]
    ds.add_new(0x00640003, "UI", ORIGINAL_UIDS[4])  # Source Frame of Reference UID
    # An attribute the table does not list: removed by default.
    ds.BodyPartExamined = "NECK OF GARCIA"
    ds.add_new(0x00189999, "LO", "VERIFIED GARCIA")  # not even in the data dictionary
    # Nested identity: a patient name and an original UID inside a kept (U*) sequence, a
    # referenced study inside a removed one.
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ORIGINAL_UIDS[5]
    item.PatientName = "GARCIA^ANA"
    item.StudyDate = "20240315"
    ds.SourceImageSequence = DicomSequence([item])
    referenced = Dataset()
    referenced.ReferencedSOPInstanceUID = ORIGINAL_UIDS[1]
    referenced.AccessionNumber = PATIENT.accession
    ds.ReferencedStudySequence = DicomSequence([referenced])
    # The burned-in banner lies under a graphics region; the tissue region is the only image.
    banner = copy.deepcopy(ds.SequenceOfUltrasoundRegions[0])
    banner.RegionSpatialFormat, banner.RegionDataType = 5, 0
    (banner.RegionLocationMinX0, banner.RegionLocationMinY0, banner.RegionLocationMaxX1,
     banner.RegionLocationMaxY1) = BANNER  # fmt: skip
    ds.SequenceOfUltrasoundRegions.append(banner)
    # The file meta.
    ds.file_meta.SourceApplicationEntityTitle = "SOURCE_AE"
    ds.file_meta.SendingApplicationEntityTitle = "SOURCE_AE"
    ds.save_as(path, enforce_file_format=True)
    return path


def _assert_clean(path: Path) -> None:
    raw = path.read_bytes()
    for value in IDENTIFIERS:
        assert value.encode() not in raw, value
    for uid in ORIGINAL_UIDS:
        assert uid.encode() not in raw, uid
    assert audit_dataset(pydicom.dcmread(path)) == []


def test_the_table_is_complete_and_options_resolve():
    table = confidentiality_profile()
    assert len(table) == 621  # every row of PS3.15 Table E.1-1
    assert table["00080012"].basic == "X/D"  # Instance Creation Date
    assert table["00080017"].basic == "U"  # Acquisition UID
    assert action_for(pydicom.tag.Tag("InstanceCreationDate"), ["basic"]) == "D"
    assert action_for(pydicom.tag.Tag("StationAETitle"), ["basic"]) == "X"
    assert action_for(pydicom.tag.Tag("BodyPartExamined"), ["basic"]) == "X"  # not in the table
    assert action_for(pydicom.tag.Tag("ContributingEquipmentSequence"), ["basic"]) == "X"
    assert action_for(pydicom.tag.Tag("SequenceOfUltrasoundRegions"), ["basic"]) == "K"
    assert action_for(pydicom.tag.Tag(0x00020016), ["basic"]) == "X"  # group 0002 in a dataset
    # The keep-list holds nothing the table decides.
    keep_in_table = [k for k in ULTRASOUND_KEEP if f"{pydicom.tag.Tag(k):08X}" in table]
    assert keep_in_table == []


def test_no_identifier_of_any_class_survives_in_any_byte(tmp_path):
    source = hostile_export(tmp_path / "export.dcm")
    original = pydicom.dcmread(source)
    assert len(audit_dataset(original)) > 30
    clean = deidentify(original, DeidentificationOptions(salt="pepper"))
    clean.save_as(tmp_path / "clean.dcm", enforce_file_format=True)
    _assert_clean(tmp_path / "clean.dcm")
    reread = pydicom.dcmread(tmp_path / "clean.dcm")
    for keyword in ("InstanceCreationDate", "StudyVerifiedDate", "DateOfSecondaryCapture",
                    "StationAETitle", "RetrieveAETitle", "BodyPartExamined",
                    "ReferencedStudySequence"):  # fmt: skip
        value = reread.get(keyword)
        assert not value or value == "19000101", keyword  # removed, emptied or a dummy
    assert "SourceApplicationEntityTitle" not in reread.file_meta
    assert reread.AcquisitionUID.startswith(UID_ROOT)
    assert reread.SourceImageSequence[0].PatientName == ""  # emptied, and the audit agrees
    assert reread.SourceImageSequence[0].ReferencedSOPInstanceUID.startswith(UID_ROOT)
    assert reread.file_meta.MediaStorageSOPInstanceUID == reread.SOPInstanceUID
    assert reread.preamble == b"\x00" * 128
    # The banner under the graphics region is blank; the tissue region is untouched.
    pixels = reread.pixel_array
    assert not pixels[1:8, 2:60].any()
    min_x, min_y, max_x, max_y = REGION
    tissue = pydicom.dcmread(source).pixel_array[min_y : max_y + 1, min_x : max_x + 1]
    np.testing.assert_array_equal(pixels[min_y : max_y + 1, min_x : max_x + 1], tissue)


def test_the_seg_and_its_source_copy_carry_nothing_of_the_original(tmp_path):
    image = read_ultrasound(hostile_export(tmp_path / "export.dcm"))
    assert image.dataset is not None
    mask = np.zeros(image.frames[0].image.shape, dtype=bool)
    mask[5:15, 10:30] = True
    write_dicom_outputs(tmp_path / "out", image.dataset, mask, image.crop,
                        deid=DeidentificationOptions(salt="pepper"),
                        software_version="test")  # fmt: skip
    for name in ("segmentation.dcm", "source.dcm"):
        _assert_clean(tmp_path / "out" / name)
    seg = pydicom.dcmread(tmp_path / "out" / "segmentation.dcm")
    assert "ContributingEquipmentSequence" not in seg  # it carried the original date and time
    source = pydicom.dcmread(tmp_path / "out" / "source.dcm")
    reference = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0]
    assert reference.ReferencedSOPInstanceUID == source.SOPInstanceUID


def test_audit_finds_what_the_old_table_kept_and_spares_an_emptied_nested_name(tmp_path):
    clean = deidentify(pydicom.dcmread(hostile_export(tmp_path / "export.dcm")),
                       DeidentificationOptions(salt="pepper"))  # fmt: skip
    assert audit_dataset(clean) == []
    leaky = copy.deepcopy(clean)
    leaky.InstanceCreationTime = "101530"
    leaky.StationAETitle = "STATION_AE"
    leaky.AcquisitionUID = ORIGINAL_UIDS[3]
    leaky.BodyPartExamined = "NECK"
    leaky.file_meta.SourceApplicationEntityTitle = "SOURCE_AE"
    problems = "\n".join(audit_dataset(leaky))
    expected = ("InstanceCreationTime", "StationAETitle", "AcquisitionUID: UID was not",
                "BodyPartExamined: not in Table E.1-1", "SourceApplicationEntityTitle")  # fmt: skip
    for finding in expected:
        assert finding in problems
    assert "STATION_AE" not in problems  # names, never values


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
def test_damaged_elements_are_removed_not_crashed_on(tmp_path):
    ds = pydicom.dcmread(hostile_export(tmp_path / "export.dcm"))
    raw = pydicom.dataelem.RawDataElement
    for keyword, vr, value in (("ImageType", "US", b"\x01\x02\x03"),  # wrong length for US
                               ("SOPInstanceUID", "OB", b"1.2.3\xff\x00"),  # UID of another VR
                               ("Manufacturer", "LO", b"\xff\xfe\x9d")):  # fmt: skip
        tag = pydicom.tag.Tag(keyword)
        ds[tag] = raw(tag, vr, len(value), value, 0, False, True)
    clean = deidentify(ds, DeidentificationOptions(salt="pepper"))
    clean.save_as(tmp_path / "clean.dcm", enforce_file_format=True)
    reread = pydicom.dcmread(tmp_path / "clean.dcm")
    assert reread.SOPInstanceUID.startswith(UID_ROOT)
    assert reread["SOPInstanceUID"].VR == "UI"
    assert "ImageType" not in reread


@pytest.mark.parametrize("photometric", ["YBR_FULL", "PALETTE COLOR", "RGB"])
def test_cleaning_keeps_stored_samples_as_stored(tmp_path, photometric):
    # pydicom converts YBR to RGB when decoding; written back under the YBR header that would
    # change every colour of the tissue image.
    path = write_ultrasound_dicom(
        tmp_path / "colour.dcm", smooth_frame(), photometric=photometric, regions=[REGION],
        spacing_mm=SPACING, patient=PATIENT,
    )  # fmt: skip
    before = read_ultrasound(path).frames[0].image
    clean = deidentify(pydicom.dcmread(path), DeidentificationOptions(salt="pepper"))
    clean.save_as(tmp_path / "clean.dcm", enforce_file_format=True)
    assert clean.PhotometricInterpretation == photometric
    np.testing.assert_array_equal(read_ultrasound(tmp_path / "clean.dcm").frames[0].image, before)
    assert audit_dataset(pydicom.dcmread(tmp_path / "clean.dcm")) == []
