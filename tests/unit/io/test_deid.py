"""De-identification (PS3.15 Annex E basic profile + options) and its audit."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from dicom_helpers import IDENTIFYING_TEXT, PATIENT, REGION, SPACING, cine, smooth_frame

from thyroid_monai.io.deid import (
    UID_ROOT,
    DeidentificationError,
    DeidentificationOptions,
    audit_dataset,
    confidentiality_profile,
    date_shift_days,
    deidentify,
    effective_action,
    pseudonym,
    remap_uid,
)
from thyroid_monai.io.dicom import read_ultrasound
from thyroid_monai.io.dicom_write import PatientInfo, write_ultrasound_dicom

UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")


def _export(path, frames=None, syntax="explicit", photometric="RGB", patient=PATIENT, **extra):
    write_ultrasound_dicom(path, smooth_frame() if frames is None else frames,
                           transfer_syntax=syntax, photometric=photometric, regions=[REGION],
                           spacing_mm=SPACING, patient=patient, overlay=True, **extra)  # fmt: skip
    return pydicom.dcmread(path)


@pytest.mark.parametrize(("syntax", "photometric"),
                         [("explicit", "RGB"), ("rle", "MONOCHROME2"), ("jpeg-baseline", "RGB"),
                          ("jpeg-ls", "PALETTE COLOR")])  # fmt: skip
def test_every_identifying_value_the_writer_filled_is_gone(syntax, photometric):
    original = _export("export.dcm", cine(2), syntax, photometric)
    assert len(audit_dataset(original)) > 20  # the export is full of identity
    clean = deidentify(original, DeidentificationOptions(salt="pepper"))
    clean.save_as("clean.dcm", enforce_file_format=True)
    raw = pydicom.filebase.DicomFile("clean.dcm", "rb").read()
    for text in IDENTIFYING_TEXT:
        assert text.encode() not in raw, text
    reread = pydicom.dcmread("clean.dcm")
    assert audit_dataset(reread) == []
    assert reread.PatientIdentityRemoved == "YES"
    assert reread.PatientID == reread.PatientName == pseudonym(PATIENT.patient_id, "pepper")
    codes = [item.CodeValue for item in reread.DeidentificationMethodCodeSequence]
    assert codes == ["113100", "113101"]
    assert not any(element.tag.is_private for element in reread)
    assert not any(element.tag.group == 0x6000 for element in reread)  # overlay removed
    assert "SequenceOfUltrasoundRegions" in reread  # kept: spacing and crop need it


def test_pixels_outside_the_regions_are_zero_and_inside_unchanged():
    frames = cine(3)
    original = _export("export.dcm", frames, "rle", "MONOCHROME2")
    clean = deidentify(original, DeidentificationOptions(salt="pepper"))
    pixels = clean.pixel_array
    min_x, min_y, max_x, max_y = REGION
    inside = np.zeros(pixels.shape[1:], bool)
    inside[min_y : max_y + 1, min_x : max_x + 1] = True
    assert not pixels[:, ~inside].any()
    np.testing.assert_array_equal(pixels[:, inside], frames[:, inside])
    assert clean.BurnedInAnnotation == "NO"
    clean.save_as("clean.dcm", enforce_file_format=True)
    image = read_ultrasound("clean.dcm")  # still a valid ultrasound file with its spacing
    assert image.spacing_mm == pytest.approx(SPACING)


def test_uids_map_consistently_for_one_salt_and_differently_for_another():
    first = _export("a.dcm", instance_number=1)
    second = _export("b.dcm", study_uid=first.StudyInstanceUID,
                     series_uid=first.SeriesInstanceUID, instance_number=2)  # fmt: skip
    options = DeidentificationOptions(salt="pepper")
    a, b = deidentify(first, options), deidentify(second, options)
    again = deidentify(first, options)
    other_salt = deidentify(first, DeidentificationOptions(salt="salt"))
    for keyword in UID_KEYWORDS:
        assert a[keyword].value.startswith(UID_ROOT)
        assert a[keyword].value != first[keyword].value
        assert a[keyword].value == again[keyword].value
        assert a[keyword].value != other_salt[keyword].value
    assert a.StudyInstanceUID == b.StudyInstanceUID
    assert a.SOPInstanceUID != b.SOPInstanceUID
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.PatientID == b.PatientID != other_salt.PatientID


def test_compressed_pixels_keep_the_salted_uid_mapping():
    # Cleaning decompresses the pixels; the instance UID must still be the salted remap of the
    # original (pydicom would otherwise draw a random one), so references to it stay valid.
    original = _export("rle.dcm", syntax="rle", photometric="MONOCHROME2")
    options = DeidentificationOptions(salt="pepper")
    first, again = deidentify(original, options), deidentify(original, options)
    assert first.SOPInstanceUID == again.SOPInstanceUID == remap_uid(original.SOPInstanceUID,
                                                                     "pepper")  # fmt: skip


def test_modified_dates_shift_every_date_of_a_patient_by_the_same_days():
    later = PatientInfo.fake("GARCIA^ANA", PATIENT.patient_id, "20240401", "080000")
    options = DeidentificationOptions(salt="pepper", retain_dates="modified")
    first = deidentify(_export("a.dcm"), options)
    second = deidentify(_export("b.dcm", patient=later), options)
    shift = date_shift_days(PATIENT.patient_id, "pepper", options.max_date_shift_days)
    assert 1 <= shift <= options.max_date_shift_days
    day = np.datetime64("2024-03-15") - np.timedelta64(shift, "D")
    assert first.StudyDate == str(day).replace("-", "")
    assert first.AcquisitionDateTime == first.StudyDate + PATIENT.study_time
    assert first.StudyTime == PATIENT.study_time  # times keep their value
    gap = np.datetime64(f"{second.StudyDate[:4]}-{second.StudyDate[4:6]}-{second.StudyDate[6:]}")
    assert gap - day == np.timedelta64(17, "D")  # 15 March -> 1 April, as in the originals
    assert first.PatientBirthDate == ""  # not a study date: the basic profile empties it
    assert audit_dataset(first) == []
    assert "113107" in [item.CodeValue for item in first.DeidentificationMethodCodeSequence]
    plain = deidentify(_export("c.dcm"), DeidentificationOptions(salt="pepper"))
    assert (plain.StudyDate == "" and "AcquisitionDate" not in plain) or plain.AcquisitionDate == ""


def test_audit_finds_what_is_left():
    clean = deidentify(_export("a.dcm"), DeidentificationOptions(salt="pepper"))
    clean.InstitutionName = "PHANTOM GENERAL HOSPITAL"
    clean.PatientID = "MRN7654321"
    clean.private_block(0x0011, "LEAK", create=True).add_new(0x01, "LO", "GARCIA")
    clean.StudyInstanceUID = "1.2.3.4"
    pixels = clean.pixel_array.copy()
    pixels[0, 0] = 200
    clean.PixelData = pixels.tobytes()
    problems = "\n".join(audit_dataset(clean))
    for expected in ("InstitutionName", "PatientID", "private attribute", "StudyInstanceUID",
                     "non-zero samples outside"):  # fmt: skip
        assert expected in problems


def test_burned_in_file_without_regions_is_refused():
    write_ultrasound_dicom("noregion.dcm", smooth_frame(), regions=[], spacing_mm=None,
                           patient=PATIENT)  # fmt: skip
    with pytest.raises(DeidentificationError, match="no Sequence of Ultrasound Regions"):
        deidentify(pydicom.dcmread("noregion.dcm"), DeidentificationOptions(salt="pepper"))


def test_profile_table_and_option_resolution():
    table = confidentiality_profile()
    assert len(table) > 400
    assert table["00100010"].basic == "Z"  # Patient's Name
    assert effective_action(table["00080020"], ["basic"]) == "Z"  # Study Date
    assert effective_action(table["00080020"], ["basic", "modified_dates"]) == "C"
    assert effective_action(table["00080020"], ["basic", "full_dates"]) == "K"
    assert effective_action(table["00080080"], ["basic"]) == "D"  # Institution Name, X/Z/D
    assert effective_action(table["00080080"], ["basic", "institution_identity"]) == "K"
    assert effective_action(table["00082112"], ["basic"]) == "U*"  # Source Image Sequence
    with pytest.raises(ValueError, match="salt"):
        DeidentificationOptions(salt="")
