"""Writing realistic synthetic ultrasound DICOM from phantom frames.

The files look like a scanner export: US Image Storage (or US Multi-frame Image Storage for a
cine), the tissue image inside a frame with burned-in text (``BurnedInAnnotation`` YES), a
Sequence of Ultrasound Regions giving the tissue region and its pixel size in centimetres, patient
and study attributes filled with (fake) identifying values, a vendor private block and, on
request, an overlay. They exercise the reader and the de-identification exactly where real
exports go wrong.

Colour modes start from the grayscale frame: ``RGB``, ``YBR_FULL`` (the same colours in YCbCr) and
``YBR_FULL_422`` (JPEG Baseline's native form) draw a coloured orientation marker outside the
tissue region, as scanners do; ``PALETTE COLOR`` stores indices into an inverted gray palette, so
a reader that ignores the lookup table gets the image upside down in intensity.

Transfer syntaxes: explicit and implicit VR little endian, RLE Lossless (pydicom's own encoder),
JPEG Baseline (Pillow; photometric YBR_FULL_422 for colour), JPEG Lossless first-order
prediction (a small encoder in this module, 8-bit grayscale), JPEG-LS Lossless and JPEG 2000
Lossless (through pydicom's plugins from the ``dicom`` extra).
"""

from __future__ import annotations

import datetime
import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import convert_color_space
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)

from thyroid_monai.io.dicom import (
    REGION_DATA_TISSUE,
    REGION_FORMAT_2D,
    UNITS_CM,
    US_IMAGE_STORAGE,
    US_MULTIFRAME_IMAGE_STORAGE,
)
from thyroid_monai.io.files import atomic_path

TRANSFER_SYNTAXES: dict[str, UID] = {
    "explicit": ExplicitVRLittleEndian,
    "implicit": ImplicitVRLittleEndian,
    "rle": RLELossless,
    "jpeg-baseline": JPEGBaseline8Bit,
    "jpeg-lossless": JPEGLosslessSV1,
    "jpeg-ls": JPEGLSLossless,
    "jpeg2000": JPEG2000Lossless,
}
"""Short names of the transfer syntaxes the writer produces."""

PHOTOMETRICS = ("MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422", "PALETTE COLOR")

PRIVATE_CREATOR = "THYROID_MONAI PHANTOM"
"""Creator of the vendor private block the writer adds (group 0x0009)."""

MARKER_COLOUR = (255, 200, 0)
"""The orientation marker drawn outside the tissue region in colour modes (amber)."""


@dataclass(frozen=True)
class PatientInfo:
    """Identifying attributes written into a synthetic export (all fake).

    Attributes:
        name: Patient's name, DICOM person-name form ``FAMILY^GIVEN``.
        patient_id: Medical record number.
        birth_date: ``YYYYMMDD``.
        sex: ``F``, ``M`` or ``O``.
        study_date: ``YYYYMMDD``.
        study_time: ``HHMMSS``.
        institution: Institution name.
        accession: Accession number.
        referring_physician: Person name.
        operator: Person name of the sonographer.
        station: Station name of the scanner.
        device_serial: Serial number of the scanner.
    """

    name: str
    patient_id: str
    birth_date: str
    sex: str
    study_date: str
    study_time: str
    institution: str = "PHANTOM GENERAL HOSPITAL"
    accession: str = "ACC0000001"
    referring_physician: str = "HOUSE^GREGORY"
    operator: str = "SONO^SAM"
    station: str = "US-ROOM-3"
    device_serial: str = "SN-0000001"

    @classmethod
    def fake(
        cls,
        name: str,
        patient_id: str,
        study_date: str,
        study_time: str,
        institution: str = "PHANTOM GENERAL HOSPITAL",
    ) -> PatientInfo:
        """Completes the burned-in identity with derived fake values (stable per patient)."""
        digest = int.from_bytes(hashlib.sha256(patient_id.encode()).digest()[:8], "big")
        year = 1940 + digest % 60
        birth = datetime.date(year, 1 + (digest >> 8) % 12, 1 + (digest >> 16) % 28)
        return cls(
            name=name,
            patient_id=patient_id,
            birth_date=birth.strftime("%Y%m%d"),
            sex="FM"[(digest >> 24) % 2],
            study_date=study_date,
            study_time=study_time,
            institution=institution,
            accession=f"ACC{digest % 10**7:07d}",
            station=f"US-ROOM-{1 + (digest >> 32) % 9}",
            device_serial=f"SN-{(digest >> 40) % 10**7:07d}",
        )


def _age(birth_date: str, study_date: str) -> str:
    born = datetime.datetime.strptime(birth_date, "%Y%m%d").date()
    seen = datetime.datetime.strptime(study_date, "%Y%m%d").date()
    years = seen.year - born.year - ((seen.month, seen.day) < (born.month, born.day))
    return f"{max(years, 0):03d}Y"


def _region_item(bounds: tuple[int, int, int, int], spacing_mm: tuple[float, float]) -> Dataset:
    item = Dataset()
    item.RegionSpatialFormat = REGION_FORMAT_2D
    item.RegionDataType = REGION_DATA_TISSUE
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = bounds[0], bounds[1]
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = bounds[2], bounds[3]
    item.ReferencePixelX0 = (bounds[2] - bounds[0]) // 2
    item.ReferencePixelY0 = 0
    item.ReferencePixelPhysicalValueX = 0.0
    item.ReferencePixelPhysicalValueY = 0.0
    item.PhysicalUnitsXDirection = UNITS_CM
    item.PhysicalUnitsYDirection = UNITS_CM
    item.PhysicalDeltaX = spacing_mm[0] / 10.0
    item.PhysicalDeltaY = spacing_mm[1] / 10.0
    return item


def _colour_frames(gray: np.ndarray, regions: Sequence[tuple[int, int, int, int]]) -> np.ndarray:
    """RGB frames: the gray image plus an amber marker in the top right, outside every region."""
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    rows, cols = gray.shape[-2:]
    top, left = 2, max(cols - 8, 0)
    marker = np.zeros((rows, cols), dtype=bool)
    marker[top : top + 6, left : left + 6] = True
    for min_x, min_y, max_x, max_y in regions:
        marker[min_y : max_y + 1, min_x : max_x + 1] = False
    rgb[..., marker, :] = MARKER_COLOUR
    return rgb


def _palette(dataset: Dataset) -> None:
    """An inverted 8-bit gray palette with 16-bit entries: index i shows gray 255 - i."""
    entries = ((255 - np.arange(256, dtype=np.uint16)) * 257).astype("<u2").tobytes()
    for colour in ("Red", "Green", "Blue"):
        setattr(dataset, f"{colour}PaletteColorLookupTableDescriptor", [256, 0, 16])
        setattr(dataset, f"{colour}PaletteColorLookupTableData", entries)


def ultrasound_dataset(
    frames: np.ndarray,
    *,
    regions: Sequence[tuple[int, int, int, int]],
    spacing_mm: tuple[float, float] | None,
    patient: PatientInfo,
    photometric: str = "MONOCHROME2",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    instance_number: int = 1,
    frame_time_ms: float = 40.0,
    multiframe: bool | None = None,
    retired_sop_class: bool = False,
    overlay: bool = False,
) -> Dataset:
    """Builds an uncompressed (explicit VR little endian) ultrasound dataset.

    Args:
        frames: ``uint8`` grayscale ``(rows, columns)`` or ``(frames, rows, columns)``.
        regions: Tissue region bounds ``(min_x, min_y, max_x, max_y)``, inclusive; one item
            each in the Sequence of Ultrasound Regions (none: no sequence).
        spacing_mm: ``(x, y)`` pixel size written into every region; ``None`` writes no region
            spacing (units "none").
        patient: Identifying attributes.
        photometric: One of :data:`PHOTOMETRICS`.
        study_uid: Study Instance UID (generated when ``None``).
        series_uid: Series Instance UID (generated when ``None``).
        sop_uid: SOP Instance UID (generated when ``None``).
        instance_number: Instance Number.
        frame_time_ms: Frame Time of a cine.
        multiframe: US Multi-frame Image Storage; by default when there is more than one frame.
        retired_sop_class: Use the retired SOP Class UID (old scanners still write it).
        overlay: Add an overlay plane (6000,xxxx), which de-identification must remove.

    Returns:
        The dataset with ``file_meta``; pass it to :func:`encode_pixel_data` to compress.
    """
    if frames.dtype != np.uint8 or frames.ndim not in (2, 3):
        raise ValueError(
            f"frames must be uint8 (rows, cols) or (n, rows, cols), got {frames.dtype} "
            f"{frames.shape}"
        )
    if photometric not in PHOTOMETRICS:
        raise ValueError(f"photometric {photometric!r} is not one of {PHOTOMETRICS}")
    stack = frames if frames.ndim == 3 else frames[None]
    count, rows, cols = stack.shape
    multi = count > 1 if multiframe is None else multiframe
    if count > 1 and not multi:
        raise ValueError(f"{count} frames need a multi-frame image")
    sop_class = US_MULTIFRAME_IMAGE_STORAGE if multi else US_IMAGE_STORAGE
    if retired_sop_class:
        sop_class = sop_class.rsplit(".", 1)[0]  # ...1.3.1 -> ...1.3, ...1.6.1 -> ...1.6
    sop_uid = sop_uid or generate_uid()

    ds = _new_dataset(sop_class, sop_uid, study_uid, series_uid)
    _identify(ds, patient)
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    ds.LossyImageCompression = "00"
    block = ds.private_block(0x0009, PRIVATE_CREATOR, create=True)
    block.add_new(0x01, "LO", patient.name)
    block.add_new(0x02, "LO", patient.patient_id)
    if regions:
        ds.SequenceOfUltrasoundRegions = DicomSequence(
            [_region_item(b, spacing_mm) if spacing_mm else _unitless_region(b) for b in regions]
        )
    if multi:
        ds.NumberOfFrames = count
        ds.FrameTime = frame_time_ms
        ds.FrameIncrementPointer = 0x00181063  # Frame Time
    if overlay:
        _add_overlay(ds, rows, cols)
    _set_pixels(ds, stack, photometric, regions)
    return ds


def _new_dataset(
    sop_class: str, sop_uid: str, study_uid: str | None, series_uid: str | None
) -> Dataset:
    """A dataset with its file meta, UIDs (generated when ``None``) and the phantom's equipment."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[ds.StudyInstanceUID, "frame-of-reference"])
    ds.Modality = "US"
    ds.Manufacturer = "THYROID_MONAI"
    ds.ManufacturerModelName = "PHANTOM"
    ds.SoftwareVersions = "0"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.BurnedInAnnotation = "YES"
    return ds


def _identify(ds: Dataset, patient: PatientInfo) -> None:
    """Fills the identifying attributes on purpose: de-identification must remove them all."""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = patient.institution
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, patient.study_date)
    ds.OtherPatientIDs = f"{patient.patient_id}-OLD"
    ds.PatientAddress = "1 PHANTOM STREET, NOWHERE"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = ds.AcquisitionDate = patient.study_date
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = ds.AcquisitionTime = patient.study_time
    ds.AcquisitionDateTime = patient.study_date + patient.study_time
    ds.AccessionNumber = patient.accession
    ds.StudyID = patient.accession[-6:]
    ds.StudyDescription = f"THYROID US {patient.name}"
    ds.SeriesDescription = "THYROID TRANSVERSE"
    ds.ReferringPhysicianName = patient.referring_physician
    ds.PerformingPhysicianName = patient.referring_physician
    ds.OperatorsName = patient.operator
    ds.InstitutionName = patient.institution
    ds.InstitutionAddress = "1 HOSPITAL ROAD, NOWHERE"
    ds.StationName = patient.station
    ds.DeviceSerialNumber = patient.device_serial


def _add_overlay(ds: Dataset, rows: int, cols: int) -> None:
    """An overlay plane (6000,xxxx) covering the image, which de-identification must remove."""
    ds.add_new(0x60000010, "US", rows)
    ds.add_new(0x60000011, "US", cols)
    ds.add_new(0x60000040, "CS", "G")
    ds.add_new(0x60000050, "SS", [1, 1])
    ds.add_new(0x60000100, "US", 1)
    ds.add_new(0x60000102, "US", 0)
    ds.add_new(
        0x60003000,
        "OW",
        np.packbits(np.ones(rows * cols, np.uint8), bitorder="little").tobytes(),
    )


def _unitless_region(bounds: tuple[int, int, int, int]) -> Dataset:
    item = _region_item(bounds, (1.0, 1.0))
    item.PhysicalUnitsXDirection = 0
    item.PhysicalUnitsYDirection = 0
    return item


def _set_pixels(
    ds: Dataset, stack: np.ndarray, photometric: str, regions: Sequence[tuple[int, int, int, int]]
) -> None:
    _, rows, cols = stack.shape
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    if photometric == "MONOCHROME2":
        samples, pixels = 1, stack
    elif photometric == "PALETTE COLOR":
        samples, pixels = 1, (255 - stack).astype(np.uint8)
        _palette(ds)
    else:
        samples = 3
        pixels = np.stack([_colour_frames(frame, regions) for frame in stack])
        if photometric == "YBR_FULL":
            pixels = convert_color_space(pixels, "RGB", "YBR_FULL")
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if photometric == "YBR_FULL_422" else photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds["PixelData"].VR = "OB"


def encode_pixel_data(ds: Dataset, transfer_syntax: str) -> Dataset:
    """Re-encodes ``ds`` (from :func:`ultrasound_dataset`) in another transfer syntax, in place.

    Args:
        ds: The dataset, uncompressed.
        transfer_syntax: A key of :data:`TRANSFER_SYNTAXES`.

    Returns:
        ``ds``.

    Raises:
        ValueError: For an unknown syntax or a photometric/syntax pair this writer cannot make.
    """
    if transfer_syntax not in TRANSFER_SYNTAXES:
        raise ValueError(
            f"unknown transfer syntax {transfer_syntax!r}; use {list(TRANSFER_SYNTAXES)}"
        )
    syntax = TRANSFER_SYNTAXES[transfer_syntax]
    photometric = str(ds.PhotometricInterpretation)
    count = int(ds.get("NumberOfFrames", 1))
    samples = int(ds.SamplesPerPixel)
    shape = (count, int(ds.Rows), int(ds.Columns)) + ((3,) if samples == 3 else ())
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint8).reshape(shape)
    if syntax in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax
        return ds
    if syntax in (RLELossless, JPEGLSLossless, JPEG2000Lossless):
        array = pixels if count > 1 else pixels[0]
        ds.compress(syntax, array, encoding_plugin="pydicom" if syntax == RLELossless else "")
        return ds
    if syntax == JPEGBaseline8Bit:
        if photometric == "PALETTE COLOR":
            raise ValueError("palette indices cannot be compressed lossily (JPEG Baseline)")
        if photometric == "YBR_FULL":
            pixels = convert_color_space(pixels, "YBR_FULL", "RGB")
        ds.PixelData = encapsulate([_jpeg_baseline(frame) for frame in pixels], has_bot=count > 1)
        if samples == 3:
            ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:  # JPEG Lossless, first-order prediction
        if photometric != "MONOCHROME2":
            raise ValueError("the JPEG Lossless encoder writes 8-bit MONOCHROME2 only")
        ds.PixelData = encapsulate(
            [encode_jpeg_lossless(frame) for frame in pixels], has_bot=count > 1
        )
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _jpeg_baseline(frame: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    mode = "L" if frame.ndim == 2 else "RGB"
    # subsampling=1 is 4:2:2, which DICOM calls YBR_FULL_422.
    Image.fromarray(frame, mode=mode).save(buffer, format="JPEG", quality=quality, subsampling=1)
    return buffer.getvalue()


def encode_jpeg_lossless(frame: np.ndarray) -> bytes:
    """Encodes an 8-bit grayscale frame as lossless JPEG (ITU T.81 process 14, predictor 1).

    Prediction: the first pixel from 128, the rest of the first row from the left neighbour, the
    first column from the pixel above, every other pixel from its left neighbour. Differences are
    Huffman coded with a fixed table that gives every category (0..16) a 5-bit code.

    Args:
        frame: ``uint8`` ``(rows, columns)``.

    Returns:
        A complete JPEG stream (SOI ... EOI).
    """
    if frame.dtype != np.uint8 or frame.ndim != 2:
        raise ValueError(f"expected a uint8 (rows, columns) frame, got {frame.dtype} {frame.shape}")
    rows, cols = frame.shape
    values = frame.astype(np.int32)
    prediction = np.empty_like(values)
    prediction[:, 1:] = values[:, :-1]
    prediction[1:, 0] = values[:-1, 0]
    prediction[0, 0] = 128
    difference = (values - prediction).ravel()
    magnitude = np.abs(difference)
    category = np.zeros_like(magnitude)
    nonzero = magnitude > 0
    category[nonzero] = np.floor(np.log2(magnitude[nonzero])).astype(np.int32) + 1
    extra = np.where(difference >= 0, difference, difference + (1 << category) - 1)
    code_bits = 5
    lengths = code_bits + category
    words = (category.astype(np.int64) << category) | (
        extra.astype(np.int64) & ((1 << category) - 1)
    )
    # Bits of every word, most significant first, then only the first `length` bits of each.
    width = int(lengths.max())
    shifts = np.arange(width - 1, -1, -1)
    bits = ((words[:, None] << (width - lengths)[:, None]) >> shifts) & 1
    used = np.arange(width)[None, :] < lengths[:, None]
    stream = bits[used].astype(np.uint8)
    stream = np.concatenate([stream, np.ones((-stream.size) % 8, np.uint8)])  # pad with 1-bits
    packed = np.packbits(stream).tobytes().replace(b"\xff", b"\xff\x00")  # byte stuffing

    def segment(marker: int, payload: bytes) -> bytes:
        return marker.to_bytes(2, "big") + (len(payload) + 2).to_bytes(2, "big") + payload

    counts = bytes([0, 0, 0, 0, 17] + [0] * 11)  # 17 codes of length 5
    huffman = segment(0xFFC4, bytes([0x00]) + counts + bytes(range(17)))
    frame_header = segment(
        0xFFC3,
        bytes([8]) + rows.to_bytes(2, "big") + cols.to_bytes(2, "big") + bytes([1, 1, 0x11, 0]),
    )
    scan_header = segment(0xFFDA, bytes([1, 1, 0x00, 1, 0, 0]))
    return b"\xff\xd8" + huffman + frame_header + scan_header + packed + b"\xff\xd9"


def write_ultrasound_dicom(
    path: str | Path,
    frames: np.ndarray,
    *,
    transfer_syntax: str = "explicit",
    **options: object,
) -> Path:
    """Writes a synthetic ultrasound DICOM file atomically.

    Args:
        path: Destination.
        frames: See :func:`ultrasound_dataset`.
        transfer_syntax: A key of :data:`TRANSFER_SYNTAXES`.
        **options: Passed to :func:`ultrasound_dataset` (regions, spacing_mm, patient, ...).

    Returns:
        The path written.
    """
    if options.get("photometric") == "YBR_FULL_422" and transfer_syntax != "jpeg-baseline":
        raise ValueError("YBR_FULL_422 is written only with JPEG Baseline (its native form)")
    ds = ultrasound_dataset(frames, **options)  # type: ignore[arg-type]
    encode_pixel_data(ds, transfer_syntax)
    with atomic_path(path) as temporary:
        ds.save_as(temporary, enforce_file_format=True)
    return Path(path)
