"""Reading ultrasound DICOM: every photometric interpretation and syntax, regions, frames."""

from __future__ import annotations

import itertools

import numpy as np
import pydicom
import pytest
from dicom_helpers import PATIENT, REGION, SPACING, cine, smooth_frame
from pydicom.pixels.decoders.base import Decoder

from thyroid_monai.io.dicom import (
    US_IMAGE_STORAGE_RETIRED,
    DicomReadError,
    MissingCodecError,
    parse_frame_policy,
    read_ultrasound,
)
from thyroid_monai.io.dicom_write import (
    TRANSFER_SYNTAXES,
    encode_jpeg_lossless,
    ultrasound_dataset,
    write_ultrasound_dicom,
)

LOSSLESS_COMBINATIONS = [
    *itertools.product(["explicit", "implicit", "rle", "jpeg-ls", "jpeg2000"],
                       ["MONOCHROME2", "RGB", "YBR_FULL", "PALETTE COLOR"]),
    ("jpeg-lossless", "MONOCHROME2"),
]  # fmt: skip
LOSSY_COMBINATIONS = [("jpeg-baseline", p) for p in ("MONOCHROME2", "RGB", "YBR_FULL_422")]


def _expected(frames: np.ndarray) -> np.ndarray:
    min_x, min_y, max_x, max_y = REGION
    return frames[..., min_y : max_y + 1, min_x : max_x + 1]


def _write(path, frames, syntax, photometric, **options):
    return write_ultrasound_dicom(
        path, frames, transfer_syntax=syntax, photometric=photometric, regions=[REGION],
        spacing_mm=SPACING, patient=PATIENT, **options,
    )  # fmt: skip


@pytest.mark.parametrize("multiframe", [False, True], ids=["single", "cine"])
@pytest.mark.parametrize(("syntax", "photometric"), LOSSLESS_COMBINATIONS)
def test_lossless_syntaxes_give_back_the_exact_cropped_pixels_and_spacing(
    syntax, photometric, multiframe
):
    frames = cine(3) if multiframe else smooth_frame()
    path = _write("image.dcm", frames, syntax, photometric)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == TRANSFER_SYNTAXES[syntax]
    image = read_ultrasound(path)
    got = np.stack([f.image for f in image.frames])
    np.testing.assert_array_equal(got, _expected(frames if multiframe else frames[None]))
    assert image.spacing_mm == pytest.approx(SPACING)
    assert image.spacing_source == "regions"
    assert image.crop == REGION
    assert [f.number for f in image.frames] == ([1, 2, 3] if multiframe else [1])


@pytest.mark.parametrize("multiframe", [False, True], ids=["single", "cine"])
@pytest.mark.parametrize(("syntax", "photometric"), LOSSY_COMBINATIONS)
def test_jpeg_baseline_pixels_stay_within_compression_error(syntax, photometric, multiframe):
    frames = cine(2) if multiframe else smooth_frame()
    image = read_ultrasound(_write("image.dcm", frames, syntax, photometric))
    got = np.stack([f.image for f in image.frames]).astype(int)
    error = np.abs(got - _expected(frames if multiframe else frames[None]).astype(int))
    assert error.mean() < 1.5
    assert error.max() <= 16
    assert image.spacing_mm == pytest.approx(SPACING)


def test_jpeg_lossless_encoder_handles_extreme_differences():
    frame = np.zeros((9, 13), np.uint8)
    frame[::2, ::2] = 255  # differences of +-255 everywhere
    frame[4, 6] = 128
    ds = ultrasound_dataset(frame, regions=[], spacing_mm=None, patient=PATIENT)
    ds.PixelData = pydicom.encaps.encapsulate([encode_jpeg_lossless(frame)])
    ds.file_meta.TransferSyntaxUID = TRANSFER_SYNTAXES["jpeg-lossless"]
    ds.save_as("extreme.dcm", enforce_file_format=True)
    np.testing.assert_array_equal(read_ultrasound("extreme.dcm").frames[0].image, frame)


def test_retired_sop_class_is_read():
    path = _write("old.dcm", smooth_frame(), "explicit", "MONOCHROME2", retired_sop_class=True)
    assert pydicom.dcmread(path).SOPClassUID == US_IMAGE_STORAGE_RETIRED
    assert read_ultrasound(path).spacing_mm == pytest.approx(SPACING)


def test_spacing_falls_back_to_pixel_spacing_then_unknown():
    ds = ultrasound_dataset(smooth_frame(), regions=[REGION], spacing_mm=None, patient=PATIENT)
    ds.save_as("unitless.dcm", enforce_file_format=True)
    image = read_ultrasound("unitless.dcm")
    assert image.spacing_mm is None
    assert image.spacing_source is None
    assert image.crop == REGION  # the region still crops

    ds.PixelSpacing = [0.2, 0.3]  # row spacing (y) first, then column spacing (x)
    ds.save_as("pixel_spacing.dcm", enforce_file_format=True)
    image = read_ultrasound("pixel_spacing.dcm")
    assert image.spacing_mm == pytest.approx((0.3, 0.2))
    assert image.spacing_source == "pixel_spacing"

    bare = ultrasound_dataset(smooth_frame(), regions=[], spacing_mm=None, patient=PATIENT)
    bare.save_as("bare.dcm", enforce_file_format=True)
    image = read_ultrasound("bare.dcm")
    assert image.spacing_mm is None
    assert image.frames[0].image.shape == smooth_frame().shape  # nothing to crop to


def test_dual_view_uses_the_largest_tissue_region_or_the_one_asked_for():
    small, large = (2, 10, 30, 40), (40, 10, 81, 60)
    frame = smooth_frame()
    write_ultrasound_dicom("dual.dcm", frame, regions=[small, large], spacing_mm=SPACING,
                           patient=PATIENT)  # fmt: skip
    assert read_ultrasound("dual.dcm").crop == large
    image = read_ultrasound("dual.dcm", region=0)
    np.testing.assert_array_equal(image.frames[0].image, frame[10:41, 2:31])
    with pytest.raises(DicomReadError, match="region 5"):
        read_ultrasound("dual.dcm", region=5)


def test_frame_policies_keep_the_requested_frames_with_their_numbers():
    frames = cine(5)
    path = _write("cine.dcm", frames, "rle", "MONOCHROME2")
    assert [f.number for f in read_ultrasound(path, frames="middle").frames] == [3]
    assert [f.number for f in read_ultrasound(path, frames="first").frames] == [1]
    image = read_ultrasound(path, frames=4)
    assert [f.number for f in image.frames] == [4]
    np.testing.assert_array_equal(image.frames[0].image, _expected(frames[3]))
    assert image.number_of_frames == 5
    with pytest.raises(DicomReadError, match="frame 9"):
        read_ultrasound(path, frames=9)
    assert parse_frame_policy("2") == 2
    assert parse_frame_policy("all") == "all"
    with pytest.raises(ValueError, match="frame policy"):
        parse_frame_policy("half")


def test_region_outside_the_image_is_rejected():
    write_ultrasound_dicom("bad_region.dcm", smooth_frame(), regions=[(0, 0, 500, 20)],
                           spacing_mm=SPACING, patient=PATIENT)  # fmt: skip
    with pytest.raises(DicomReadError, match="outside"):
        read_ultrasound("bad_region.dcm")


def test_missing_decoder_names_the_syntax_and_the_extra(monkeypatch):
    path = _write("lossless.dcm", smooth_frame(), "jpeg-lossless", "MONOCHROME2")
    monkeypatch.setattr(Decoder, "is_available", property(lambda self: False))
    with pytest.raises(MissingCodecError, match=r"JPEG Lossless.*thyroid-monai\[dicom\]"):
        read_ultrasound(path)


def test_a_syntax_without_any_decoder_names_the_syntax(tmp_path):
    ds = pydicom.dcmread(_write("video.dcm", smooth_frame(), "explicit", "MONOCHROME2"))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.MPEG4HP41
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x01\xb3" * 8])
    ds.save_as("video.dcm", enforce_file_format=True)
    with pytest.raises(MissingCodecError, match=r"MPEG-4 AVC/H\.264"):
        read_ultrasound("video.dcm")


def _corruptions(original: bytes, ds: pydicom.Dataset):
    rng = np.random.default_rng(0)
    for cut in (0, 10, 131, 200, len(original) // 3, len(original) // 2, len(original) - 7):
        yield f"truncated at {cut}", original[:cut]
    for index in range(12):
        data = bytearray(original)
        positions = rng.integers(132, len(data) // 3, size=6)
        for position in positions:
            data[position] = int(rng.integers(0, 256))
        yield f"bytes flipped {index}", bytes(data)
    yield "random bytes", rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    yield "text file", b"patient,level\n1,TR3\n"

    def variant(change):
        copy = pydicom.dcmread(pydicom.filebase.DicomBytesIO(original))
        change(copy)
        buffer = pydicom.filebase.DicomBytesIO()
        copy.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    yield "no pixel data", variant(lambda d: d.__delitem__("PixelData"))
    yield "wrong rows", variant(lambda d: setattr(d, "Rows", 999))
    yield "CT image", variant(lambda d: setattr(d, "SOPClassUID", pydicom.uid.CTImageStorage))
    yield (
        "structured report",
        variant(lambda d: setattr(d, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.88.11")),
    )
    # Wrong VRs written into the byte stream: Rows as FD (length 2), SOP class UID as a number.
    yield (
        "wrong VR rows",
        original.replace(b"\x28\x00\x10\x00US\x02\x00", b"\x28\x00\x10\x00FD\x02\x00"),
    )
    yield "wrong VR uid", original.replace(b"\x08\x00\x16\x00UI", b"\x08\x00\x16\x00SS", 1)
    yield "more frames than data", variant(lambda d: setattr(d, "NumberOfFrames", 50))
    yield (
        "region without bounds",
        variant(lambda d: d.SequenceOfUltrasoundRegions[0].__delitem__("RegionLocationMaxX1")),
    )


# pydicom warns about every broken element before the reader turns it into an error.
@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
@pytest.mark.parametrize("syntax", ["explicit", "rle", "jpeg-baseline"])
def test_fuzzed_files_give_a_read_error_never_a_crash(syntax):
    path = _write("good.dcm", cine(2), syntax, "RGB" if syntax != "explicit" else "MONOCHROME2")
    original = path.read_bytes()
    ds = pydicom.dcmread(path)
    outcomes = {}
    for name, data in _corruptions(original, ds):
        target = f"{name.replace(' ', '_')}.dcm"
        with open(target, "wb") as handle:
            handle.write(data)
        try:
            read_ultrasound(target)
            outcomes[name] = "read"
        except DicomReadError as error:
            outcomes[name] = "rejected" if target in str(error) else f"unnamed: {error}"
    for must_fail in ("truncated at 0", "random bytes", "no pixel data", "wrong rows",
                      "CT image", "structured report", "region without bounds", "text file",
                      "wrong VR rows", "wrong VR uid", "more frames than data"):  # fmt: skip
        assert outcomes[must_fail] == "rejected", must_fail
