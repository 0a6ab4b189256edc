"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

:func:`deidentify` applies the profile to every attribute at every nesting level, by the full
Table E.1-1 (all 621 rows, kept in ``data/confidentiality_profile.csv``):

- ``X`` remove, ``Z`` empty value, ``D`` a dummy value of the right VR (a sequence keeps its
  items, cleaned recursively), ``U`` a new UID, the same for the same UID and salt
  (``generate_uid(entropy_srcs=[salt, uid])``), ``U*`` keeps a sequence and remaps the UIDs in it,
  ``K`` keep;
- where the table offers alternatives the choice never breaks the IOD whatever the attribute's
  type: ``X/Z`` -> ``Z``, ``X/D``, ``Z/D``, ``X/Z/D`` -> ``D``, ``X/Z/U*`` -> ``U*``;
- **anything the table does not list is removed**, except the attributes of
  :data:`ULTRASOUND_KEEP`: a short explicit list of what an ultrasound image and its DICOM SEG need
  and what identifies nobody (the pixel description, the Sequence of Ultrasound Regions, the
  segment description and functional groups, codes, the de-identification record). Private
  attributes, overlays (60xx), curves (50xx), group lengths and stray command (0000) or file-meta
  (0002) elements inside the dataset go with the rest;
- **every UID** that survives and is not a registered DICOM UID (SOP classes, transfer syntaxes,
  coding schemes stay) is remapped, whether the table lists it or not, so references between
  files still hold;
- an element whose value cannot be parsed or written (a wrong VR, a bad length) is removed: what
  cannot be read cannot be checked;
- the file meta information is rebuilt from the SOP class, the remapped instance UID and the
  transfer syntax: source and sending AE titles and private meta information do not survive; the
  128-byte preamble is zeroed;
- Patient ID and Patient's Name get the same pseudonym, ``ANON-`` and 12 hex digits of a salted
  hash of the original Patient ID, so images of one patient stay together for patient-level splits
  while the identity cannot be recovered without the salt.

Options (each recorded in the De-identification Method Code Sequence, CID 7050):

- Clean Pixel Data (113101, on by default): every sample outside the *image* regions of the
  Sequence of Ultrasound Regions (2D, M-mode or spectral regions of tissue, colour-flow or Doppler
  data; see :attr:`thyroid_monai.io.dicom.UltrasoundRegion.is_image`) is set to 0 in every frame,
  pixel data are stored uncompressed, and ``BurnedInAnnotation`` becomes ``NO``. Graphics regions
  are not trusted: scanners put the name banner there. Text inside an image region would need OCR
  and is out of scope. A file with burned-in annotation and no image region cannot be cleaned and
  is refused;
- Retain Longitudinal Temporal Information with Modified Dates (113107): dates are moved back by
  the same whole number of days (1 to ``max_date_shift_days``, from the salt and the patient) in
  every file of a patient, times are kept, so intervals survive; with Full Dates (113106) they
  are kept as they are;
- Retain Patient Characteristics (113108), Device Identity (113109), Institution Identity
  (113112). Free-text attributes the profile would "clean" under an option are removed instead.
  The table's other option columns (Retain UIDs, Safe Private, Clean Descriptors/Structured
  Content/Graphics) are recorded in the CSV and not offered.

:func:`audit_dataset` checks a file against the same table and keep-list (reading the options
from its code sequence) and lists every identifying attribute left, plus non-zero pixels outside
the image regions. Neither function ever puts an element's value into a message.
"""

from __future__ import annotations

import copy
import csv
import datetime
import fnmatch
import hashlib
import io
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from thyroid_monai.io.dicom import UltrasoundRegion, frame_count, ultrasound_regions
from thyroid_monai.io.errors import SafeMessageError, safe_reason

UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""Root of the remapped UIDs (pydicom's, used by ``generate_uid`` with entropy sources)."""

PSEUDONYM_PATTERN = re.compile(r"^ANON-[0-9a-f]{12}$")

MAX_SEQUENCE_DEPTH = 16
"""Sequences nested deeper are removed (and refused by the audit): no ultrasound or SEG object
nests this deep, a damaged file may."""

DUMMY_VALUES: dict[str, str] = {
    "AE": "ANONYMOUS",
    "AS": "000Y",
    "CS": "ANONYMOUS",
    "DA": "19000101",
    "DS": "0",
    "DT": "19000101000000",
    "IS": "0",
    "LO": "ANONYMOUS",
    "LT": "ANONYMOUS",
    "PN": "ANONYMOUS",
    "SH": "ANONYMOUS",
    "ST": "ANONYMOUS",
    "TM": "000000",
    "UC": "ANONYMOUS",
    "UR": "ANONYMOUS",
    "UT": "ANONYMOUS",
}
"""The dummy value ``D`` writes for each text VR (binary VRs get an empty value)."""

ULTRASOUND_KEEP: frozenset[str] = frozenset(
    {
        # What the object is (SOPClassUID is a registered UID, so it is never remapped).
        "SpecificCharacterSet", "SOPClassUID", "Modality", "ImageType", "InstanceNumber",
        "SeriesNumber", "PatientOrientation", "PositionReferenceIndicator",
        "Manufacturer", "ManufacturerModelName", "SoftwareVersions",
        # Pixel description.
        "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
        "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration", "NumberOfFrames",
        "FrameIncrementPointer", "FrameTime", "FrameTimeVector", "PixelAspectRatio",
        "PixelSpacing", "PixelData", "LossyImageCompression", "LossyImageCompressionRatio",
        "LossyImageCompressionMethod", "BurnedInAnnotation", "RecognizableVisualFeatures",
        "PresentationLUTShape", "RedPaletteColorLookupTableDescriptor",
        "GreenPaletteColorLookupTableDescriptor", "BluePaletteColorLookupTableDescriptor",
        "RedPaletteColorLookupTableData", "GreenPaletteColorLookupTableData",
        "BluePaletteColorLookupTableData",
        # Sequence of Ultrasound Regions: where the image is and how large its pixels are.
        "SequenceOfUltrasoundRegions", "RegionSpatialFormat", "RegionDataType", "RegionFlags",
        "RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1",
        "RegionLocationMaxY1", "ReferencePixelX0", "ReferencePixelY0", "PhysicalUnitsXDirection",
        "PhysicalUnitsYDirection", "ReferencePixelPhysicalValueX", "ReferencePixelPhysicalValueY",
        "PhysicalDeltaX", "PhysicalDeltaY", "TransducerFrequency",
        # Codes (segment properties, algorithm family, the de-identification method).
        "CodeValue", "CodingSchemeDesignator", "CodingSchemeVersion", "CodeMeaning",
        "LongCodeValue", "URNCodeValue",
        # The de-identification record.
        "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
        # DICOM SEG: segments, references to the source, functional groups, dimensions.
        "SegmentationType", "SegmentsOverlap", "SegmentationFractionalType",
        "MaximumFractionalValue", "ContentLabel", "ContentDescription", "SegmentSequence",
        "SegmentNumber", "SegmentLabel", "SegmentAlgorithmType", "SegmentAlgorithmName",
        "SegmentationAlgorithmIdentificationSequence", "AlgorithmFamilyCodeSequence",
        "AlgorithmName", "AlgorithmVersion", "SegmentedPropertyCategoryCodeSequence",
        "SegmentedPropertyTypeCodeSequence", "RecommendedDisplayCIELabValue",
        "ReferencedSeriesSequence", "ReferencedInstanceSequence", "ReferencedSOPClassUID",
        "ReferencedFrameNumber", "ReferencedSegmentNumber", "SharedFunctionalGroupsSequence",
        "PerFrameFunctionalGroupsSequence", "DerivationImageSequence", "DerivationCodeSequence",
        "PurposeOfReferenceCodeSequence", "SegmentIdentificationSequence",
        "FrameContentSequence", "DimensionIndexValues", "DimensionOrganizationSequence",
        "DimensionIndexSequence", "DimensionIndexPointer", "FunctionalGroupPointer",
        "DimensionDescriptionLabel", "DimensionOrganizationType", "SpatialLocationsPreserved",
    }
)  # fmt: skip
"""Attributes that Table E.1-1 does not list and that are kept: what an ultrasound image and its
DICOM SEG need to stay valid and usable, none of which identifies anyone. Everything else outside
the table is removed."""

OPTION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "modified_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "device_identity": ("113109", "Retain Device Identity Option"),
    "institution_identity": ("113112", "Retain Institution Identity Option"),
}
"""De-identification method codes (DCM, CID 7050) of the profile and the options implemented."""

# Profile-table option columns that each implemented option switches on.
_OPTION_COLUMNS = {
    "full_dates": "full",
    "modified_dates": "mod",
    "patient_characteristics": "pat",
    "device_identity": "dev",
    "institution_identity": "inst",
}
_CHOICE = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U*"}
_PATIENT_TAGS = (0x00100010, 0x00100020)


class DeidentificationError(SafeMessageError):
    """A dataset that cannot be de-identified as asked (the message says why)."""


@dataclass(frozen=True)
class ProfileEntry:
    """One row of Table E.1-1: the basic action and the actions of the options."""

    basic: str
    options: dict[str, str] = field(default_factory=dict)
    name: str = ""


@dataclass(frozen=True)
class DeidentificationOptions:
    """How to de-identify.

    Attributes:
        salt: Secret that makes UIDs, pseudonyms and date shifts consistent across files and
            runs; keep it private (with it, a known Patient ID can be linked to its pseudonym).
        clean_pixel_data: Blank everything outside the ultrasound image regions.
        retain_dates: ``"none"`` (profile default: dates removed or emptied), ``"modified"``
            (shifted per patient) or ``"full"`` (kept).
        retain_patient_characteristics: Keep sex, age, size, weight...
        retain_device_identity: Keep station name, serial numbers...
        retain_institution_identity: Keep institution name and address.
        max_date_shift_days: Largest backwards date shift of ``retain_dates="modified"``.
    """

    salt: str
    clean_pixel_data: bool = True
    retain_dates: Literal["none", "modified", "full"] = "none"
    retain_patient_characteristics: bool = False
    retain_device_identity: bool = False
    retain_institution_identity: bool = False
    max_date_shift_days: int = 3650

    def __post_init__(self) -> None:
        if not self.salt:
            raise ValueError("de-identification needs a non-empty salt")
        if self.retain_dates not in ("none", "modified", "full"):
            raise ValueError(
                f"retain_dates must be none, modified or full, got {self.retain_dates!r}"
            )
        if self.max_date_shift_days < 1:
            raise ValueError(
                f"max_date_shift_days must be at least 1, got {self.max_date_shift_days}"
            )

    @property
    def enabled(self) -> list[str]:
        """Names of the options in force (keys of :data:`OPTION_CODES`)."""
        names = []
        if self.clean_pixel_data:
            names.append("clean_pixel_data")
        if self.retain_dates != "none":
            names.append(f"{self.retain_dates}_dates")
        retained = ("patient_characteristics", "device_identity", "institution_identity")
        names.extend(name for name in retained if getattr(self, f"retain_{name}"))
        return names


@lru_cache(maxsize=1)
def confidentiality_profile() -> dict[str, ProfileEntry]:
    """Table E.1-1 keyed by ``GGGGEEEE`` (upper case; ``x`` wildcards for repeating groups).

    The row for private attributes is keyed ``PRIVATE``.
    """
    text = (
        resources.files("thyroid_monai.io").joinpath("data/confidentiality_profile.csv").read_text()
    )
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    table = {}
    for row in rows:
        options: dict[str, str] = {}
        for part in (row["options"] or "").split():
            if part == "dates":
                options.update(full="K", mod="C")
            else:
                column, _, action = part.partition("=")
                options[column] = action
        tag = row["tag"].upper()
        key = tag if tag == "PRIVATE" else tag.replace("X", "x")
        table[key] = ProfileEntry(row["basic"], options, row.get("name") or "")
    return table


@lru_cache(maxsize=1)
def _patterns() -> tuple[tuple[str, ProfileEntry], ...]:
    return tuple(
        (key.replace("x", "?"), entry) for key, entry in confidentiality_profile().items()
        if "x" in key
    )  # fmt: skip


@lru_cache(maxsize=1)
def keep_tags() -> frozenset[int]:
    """The tags of :data:`ULTRASOUND_KEEP`."""
    tags = {tag_for_keyword(keyword) for keyword in ULTRASOUND_KEEP}
    if None in tags:
        raise RuntimeError("ULTRASOUND_KEEP holds a keyword pydicom does not know")
    return frozenset(int(t) for t in tags if t is not None)


def _entry_for(tag: BaseTag) -> ProfileEntry | None:
    table = confidentiality_profile()
    key = f"{tag:08X}"
    if key in table:
        return table[key]
    for pattern, entry in _patterns():
        if fnmatch.fnmatchcase(key, pattern):
            return entry
    return None


def effective_action(entry: ProfileEntry, enabled: list[str]) -> str:
    """The single action (``X``, ``Z``, ``D``, ``U``, ``U*``, ``K`` or ``C``) for the options."""
    action = entry.basic
    for option in enabled:
        column = _OPTION_COLUMNS.get(option)
        if column and column in entry.options:
            action = entry.options[column]
    if action == "C" and "modified_dates" not in enabled:
        action = "X"  # free text is removed rather than cleaned (no text cleaning here)
    return _CHOICE.get(action, action)


def _is_structural_removal(tag: BaseTag) -> bool:
    """Private, group length, command (0000) or file-meta (0002) elements: always removed."""
    return bool(tag.is_private) or tag.element == 0 or tag.group in (0x0000, 0x0002)


def action_for(tag: BaseTag, enabled: list[str]) -> str:
    """What de-identification does with ``tag``.

    The table's action, ``K`` for the keep-list, ``X`` for everything else.
    """
    tag = Tag(tag)
    if _is_structural_removal(tag):
        return "X"
    entry = _entry_for(tag)
    if entry is not None:
        return effective_action(entry, enabled)
    return "K" if int(tag) in keep_tags() else "X"


def is_registered_uid(value: str) -> bool:
    """A UID that DICOM defines (SOP classes, transfer syntaxes, coding schemes...)."""
    uid = UID(value)
    return bool(uid.name) and uid.name != value


def remap_uid(uid: str, salt: str) -> str:
    """The replacement of ``uid``: the same for the same salt, a UID under :data:`UID_ROOT`."""
    return str(generate_uid(entropy_srcs=[salt, str(uid)]))


def pseudonym(patient_id: str, salt: str) -> str:
    """Patient pseudonym ``ANON-<12 hex>`` from a salted SHA-256 of the original Patient ID."""
    digest = hashlib.sha256(f"{salt}\x00patient\x00{patient_id}".encode()).hexdigest()
    return f"ANON-{digest[:12]}"


def date_shift_days(patient_id: str, salt: str, max_days: int) -> int:
    """Days every date of a patient moves back under the Modified Dates option (1..max_days)."""
    digest = hashlib.sha256(f"{salt}\x00dates\x00{patient_id}".encode()).digest()
    return 1 + int.from_bytes(digest[:8], "big") % max_days


def _shift_date(value: str, days: int) -> str:
    date = datetime.datetime.strptime(value[:8], "%Y%m%d").date() - datetime.timedelta(days=days)
    return date.strftime("%Y%m%d") + value[8:]


def _is_overlay_or_curve(tag: BaseTag) -> bool:
    group = tag.group
    return (0x6000 <= group <= 0x60FF or 0x5000 <= group <= 0x50FF) and group % 2 == 0


def _writable(element: DataElement) -> bool:
    """Whether ``element`` can be encoded (explicit VR little endian).

    A value of the wrong VR or length cannot, and would stop the whole file from being written.
    """
    buffer = DicomBytesIO()
    buffer.is_little_endian, buffer.is_implicit_VR = True, False
    try:
        write_data_element(buffer, element)
    except Exception:  # pydicom raises several types for values that do not fit their VR
        return False
    return True


def _values(element: DataElement) -> list[object]:
    if element.value is None:
        return []
    return list(element.value) if element.VM > 1 else [element.value]


class _Deidentifier:
    def __init__(self, options: DeidentificationOptions, patient_id: str):
        self.options = options
        self.enabled = ["basic", *options.enabled]
        self.pseudonym = pseudonym(patient_id, options.salt)
        self.shift = date_shift_days(patient_id, options.salt, options.max_date_shift_days)

    def clean(self, dataset: Dataset, depth: int = 0) -> None:
        for tag in list(dataset.keys()):
            action = action_for(tag, self.enabled)
            if action == "X":
                del dataset[tag]
                continue
            try:
                element = dataset[tag]
                if element.VR == "SQ" and depth >= MAX_SEQUENCE_DEPTH:
                    raise ValueError("nested too deeply")  # damage: too deep to check, so it goes
                self.apply(element, action, depth)
                keep = element.VR == "SQ" or tag == 0x7FE00010 or _writable(element)
            except DeidentificationError:
                raise
            except Exception:  # an unparsable value cannot be checked, so it goes
                keep = False
            if not keep and tag in dataset:
                del dataset[tag]

    def apply(self, element: DataElement, action: str, depth: int) -> None:
        vr = element.VR
        if vr == "SQ":
            if action == "Z":
                element.value = DicomSequence()
            else:  # "D", "K", "U*": keep the items, clean what they hold
                for item in element.value:
                    self.clean(item, depth + 1)
        elif action == "Z":
            element.value = "" if vr in DUMMY_VALUES else None
        elif action == "D" and vr != "UI":
            element.value = DUMMY_VALUES.get(vr)
        elif action == "C":  # modified dates (the only cleaning done here)
            element.value = self._shifted(element)
        elif vr == "UI":  # "U", "D" of a UID, and any UID kept: every UID is remapped
            self._remap(element)
        elif action == "U":  # a UID stored with another VR: remapped and stored as a UID again
            raw = element.value
            text = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
            element.VR = "UI"
            element.value = remap_uid(text.strip("\x00 "), self.options.salt)

    def _remap(self, element: DataElement) -> None:
        values = [str(v) for v in _values(element) if v]
        remapped = [v if is_registered_uid(v) else remap_uid(v, self.options.salt) for v in values]
        element.value = remapped if len(remapped) > 1 else (remapped[0] if remapped else "")

    def _shifted(self, element: DataElement) -> object:
        if element.VR not in ("DA", "DT") or not element.value:
            return element.value  # times and offsets keep their value; intervals survive
        values = _values(element)
        try:
            shifted = [_shift_date(str(v), self.shift) for v in values]
        except ValueError:
            return ""  # an unreadable date cannot be shifted, so it goes
        return shifted if element.VM > 1 else shifted[0]


def image_regions(dataset: Dataset) -> list[UltrasoundRegion]:
    """The regions whose pixels de-identification keeps (see :attr:`UltrasoundRegion.is_image`)."""
    return [region for region in ultrasound_regions(dataset) if region.is_image]


def clean_pixel_data(dataset: Dataset) -> None:
    """Sets every sample outside the image regions to 0 and stores the pixels uncompressed.

    Raises:
        DeidentificationError: If the file has burned-in annotation but no image region to keep,
            or its regions or pixel data do not fit its header.
    """
    try:
        regions = image_regions(dataset)
    except (ValueError, TypeError) as error:
        raise DeidentificationError(f"pixel data cannot be cleaned: {error}") from None
    if not regions:
        if str(dataset.get("BurnedInAnnotation", "")).upper() == "NO":
            return
        raise DeidentificationError(
            "pixel data cannot be cleaned: no Sequence of Ultrasound Regions with an image "
            "region, and burned-in annotation is not 'NO'"
        )
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        samples, frames = int(dataset.SamplesPerPixel), frame_count(dataset)
        keep = outside_regions_mask(regions, rows, columns) == 0
        if dataset.file_meta.TransferSyntaxUID.is_compressed:
            # YBR becomes RGB here; the photometric interpretation follows. The instance keeps
            # its UID (pydicom would draw a random one), which the salted remapping then
            # replaces: the same salt gives the same UIDs on every run.
            dataset.decompress(generate_instance_uid=False)
        pixels = _stored_samples(dataset).copy()
        view = pixels.reshape((frames, rows, columns, samples))
    except DeidentificationError:
        raise
    except Exception as error:  # damaged pixel data or a header that does not describe it
        raise DeidentificationError(
            f"pixel data cannot be cleaned ({safe_reason(error)})"
        ) from None
    view[:, ~keep, :] = 0
    dataset.PixelData = np.ascontiguousarray(view.reshape(pixels.shape)).tobytes()
    dataset["PixelData"].VR = "OB" if int(dataset.BitsAllocated) <= 8 else "OW"
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.BurnedInAnnotation = "NO"


def blank_outside_image_regions(
    image: np.ndarray, dataset: Dataset, crop: tuple[int, int, int, int]
) -> np.ndarray:
    """A cropped gray frame as the de-identified file shows it: 0 outside the image regions.

    Pictures made from a DICOM input (NIfTI images, overlays) go through this when
    de-identifying, so they never show more of the source than its de-identified copy.

    Args:
        image: ``(..., rows, columns)`` cut from the source's frame at ``crop``.
        dataset: The source header (its regions and burned-in annotation flag).
        crop: ``(min_x, min_y, max_x, max_y)`` of ``image`` in the frame, inclusive.

    Raises:
        DeidentificationError: As :func:`clean_pixel_data`, for a file that cannot be cleaned.
    """
    try:
        regions = image_regions(dataset)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
    except (ValueError, TypeError) as error:
        raise DeidentificationError(f"pixel data cannot be cleaned: {error}") from None
    if not regions:
        if str(dataset.get("BurnedInAnnotation", "")).upper() == "NO":
            return image
        raise DeidentificationError(
            "pixel data cannot be cleaned: no Sequence of Ultrasound Regions with an image "
            "region, and burned-in annotation is not 'NO'"
        )
    min_x, min_y, max_x, max_y = crop
    outside = outside_regions_mask(regions, rows, columns)[min_y : max_y + 1, min_x : max_x + 1]
    blanked = np.array(image, copy=True)
    blanked[..., outside] = 0
    return blanked


def _stored_samples(dataset: Dataset) -> np.ndarray:
    """The samples as stored: YBR stays YBR, palette indices stay indices.

    pydicom converts YBR to RGB by default; written back under the YBR header, that would change
    every colour of the image.
    """
    dataset.pixel_array_options(as_rgb=False)
    return dataset.pixel_array


def outside_regions_mask(regions: list[UltrasoundRegion], rows: int, columns: int) -> np.ndarray:
    """``True`` where a pixel lies outside every region.

    Raises:
        DeidentificationError: If a region does not lie inside the image.
    """
    outside = np.ones((rows, columns), dtype=bool)
    for region in regions:
        min_x, min_y, max_x, max_y = region.bounds
        if min(region.bounds) < 0 or max_x >= columns or max_y >= rows:
            raise DeidentificationError(
                f"an ultrasound region lies outside the {columns}x{rows} image"
            )
        outside[min_y : max_y + 1, min_x : max_x + 1] = False
    return outside


def _file_meta(dataset: Dataset, salt: str) -> FileMetaDataset:
    """New file meta information: only what identifies the object, remapped."""
    original = getattr(dataset, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    sop_class = str(dataset.get("SOPClassUID", "") or original.get("MediaStorageSOPClassUID", ""))
    if sop_class:
        meta.MediaStorageSOPClassUID = UID(sop_class)
    if "SOPInstanceUID" in dataset:
        meta.MediaStorageSOPInstanceUID = UID(str(dataset.SOPInstanceUID))
    elif original.get("MediaStorageSOPInstanceUID"):
        meta.MediaStorageSOPInstanceUID = UID(
            remap_uid(str(original.MediaStorageSOPInstanceUID), salt)
        )
    meta.TransferSyntaxUID = UID(str(original.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    return meta


def deidentify(dataset: Dataset, options: DeidentificationOptions) -> Dataset:
    """A de-identified copy of ``dataset`` (the input is left unchanged).

    Raises:
        DeidentificationError: If the pixels cannot be cleaned as asked or the result cannot be
            written (the message names the problem, never a value).
    """
    result = copy.deepcopy(dataset)
    try:
        patient_id = str(dataset.get("PatientID", "") or "")
    except Exception:  # a damaged Patient ID still gets a (shared) pseudonym
        patient_id = ""
    worker = _Deidentifier(options, patient_id)
    if options.clean_pixel_data and "PixelData" in result:
        clean_pixel_data(result)
    try:
        worker.clean(result)
    except RecursionError:
        raise DeidentificationError("sequences nested too deeply") from None
    result.file_meta = _file_meta(result, options.salt)
    if hasattr(result, "preamble"):
        result.preamble = b"\x00" * 128  # the preamble may hold anything, even a TIFF header
    for keyword in ("PatientID", "PatientName", "PatientIdentityRemoved",
                    "DeidentificationMethod", "DeidentificationMethodCodeSequence"):  # fmt: skip
        if keyword in result:  # set afresh, with the dictionary VR (a damaged file may differ)
            del result[keyword]
    result.PatientID = worker.pseudonym
    result.PatientName = worker.pseudonym
    result.PatientIdentityRemoved = "YES"
    # LO holds 64 characters: the codes here, their meanings in the code sequence below.
    result.DeidentificationMethod = "thyroid_monai PS3.15 DCM " + " ".join(
        OPTION_CODES[name][0] for name in worker.enabled
    )
    codes = []
    for name in worker.enabled:
        item = Dataset()
        item.CodeValue, item.CodeMeaning = OPTION_CODES[name]
        item.CodingSchemeDesignator = "DCM"
        codes.append(item)
    result.DeidentificationMethodCodeSequence = DicomSequence(codes)
    try:
        result.save_as(io.BytesIO(), enforce_file_format=True)
    except Exception as error:  # what survives must be writable, or the file is refused here
        raise DeidentificationError(
            f"the de-identified dataset cannot be written ({safe_reason(error)})"
        ) from None
    return result


def _options_of(dataset: Dataset) -> list[str]:
    by_code = {code: name for name, (code, _) in OPTION_CODES.items()}
    return [
        by_code[str(item.get("CodeValue"))]
        for item in dataset.get("DeidentificationMethodCodeSequence", [])
        if str(item.get("CodeValue")) in by_code
    ]


def _iter_elements(
    dataset: Dataset, path: str = "", depth: int = 0
) -> Iterator[tuple[str, int, DataElement]]:
    if depth > MAX_SEQUENCE_DEPTH:
        raise ValueError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH}")
    for element in dataset:
        name = element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
        where = f"{path}{name}"
        yield where, depth, element
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _iter_elements(item, f"{where}[{index}].", depth + 1)


def _is_empty(element: DataElement) -> bool:
    if element.VR == "SQ":
        return len(element.value) == 0
    return element.value in (None, "", b"") or _values(element) in ([], [""])


def _element_problem(
    where: str, depth: int, element: DataElement, enabled: list[str]
) -> str | None:
    tag = element.tag
    if tag.is_private:
        return f"{where}: private attribute left"
    if _is_overlay_or_curve(tag):
        return f"{where}: overlay or curve left"
    if tag in _PATIENT_TAGS and depth == 0:
        if not PSEUDONYM_PATTERN.match(str(element.value or "")):
            return f"{where}: not a pseudonym"
        return None
    if tag in _PATIENT_TAGS and PSEUDONYM_PATTERN.match(str(element.value or "")):
        return None  # a nested patient reference may carry the same pseudonym
    if _is_empty(element):
        return None
    action = action_for(tag, enabled)
    values = [str(v) for v in _values(element)] if element.VR != "SQ" else []
    if action == "X":
        known = _entry_for(tag) is not None or _is_structural_removal(tag)
        reason = "should have been removed" if known else "not in Table E.1-1 nor the keep-list"
        return f"{where}: {reason}"
    if element.VR == "SQ":
        return None  # its items are checked one by one
    if action == "Z":
        return f"{where}: should be empty"
    if element.VR == "UI":
        if all(v.startswith(UID_ROOT) or is_registered_uid(v) for v in values):
            return None
        return f"{where}: UID was not remapped"
    if action == "D" and any(v != DUMMY_VALUES.get(element.VR, "") for v in values):
        return f"{where}: should hold a dummy value"
    return None


def audit_dataset(dataset: Dataset) -> list[str]:
    """Every identifying attribute or pixel that remains in a de-identified dataset.

    Checks the same table and keep-list as :func:`deidentify`: an attribute that the profile
    removes, empties or replaces, or that neither the table nor :data:`ULTRASOUND_KEEP` lists, is
    a finding when present and not empty; so is a UID that was not remapped, a private attribute,
    an overlay, a file-meta AE title, and a non-zero sample outside the image regions. A problem
    names the attribute, never its value; an element that cannot be parsed is a finding too.

    Returns:
        Human-readable problems; empty when the dataset passes.
    """
    problems = []
    if str(dataset.get("PatientIdentityRemoved", "")).upper() != "YES":
        problems.append("PatientIdentityRemoved is not YES")
    enabled = ["basic", *[name for name in _options_of(dataset) if name != "basic"]]
    if "basic" not in _options_of(dataset):
        problems.append("no De-identification Method Code Sequence naming the basic profile")
    try:
        for where, depth, element in _iter_elements(dataset):
            problem = _element_problem(where, depth, element, enabled)
            if problem:
                problems.append(problem)
    except Exception as error:  # a damaged element: what cannot be read cannot pass
        problems.append(f"the dataset cannot be read to the end ({safe_reason(error)})")
    meta = getattr(dataset, "file_meta", None)
    if meta is not None:
        leaks = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                 "ReceivingApplicationEntityTitle", "PrivateInformation")  # fmt: skip
        problems.extend(f"file meta {k}: should have been removed" for k in leaks if meta.get(k))
        instance = str(meta.get("MediaStorageSOPInstanceUID", ""))
        if instance and instance != str(dataset.get("SOPInstanceUID", instance)):
            problems.append("file meta MediaStorageSOPInstanceUID differs from SOPInstanceUID")
    if "clean_pixel_data" in enabled and "PixelData" in dataset:
        try:
            problems.extend(_audit_pixels(dataset))
        except Exception as error:  # damaged pixel data cannot be shown to be clean
            problems.append(f"pixel data cannot be checked ({safe_reason(error)})")
    return problems


def _audit_pixels(dataset: Dataset) -> list[str]:
    problems = []
    if str(dataset.get("BurnedInAnnotation", "")).upper() != "NO":
        problems.append("BurnedInAnnotation is not NO")
    regions = image_regions(dataset)
    if regions:
        outside = outside_regions_mask(regions, int(dataset.Rows), int(dataset.Columns))
        frames = frame_count(dataset)
        pixels = _stored_samples(dataset).reshape(
            (frames, int(dataset.Rows), int(dataset.Columns), int(dataset.SamplesPerPixel))
        )
        count = int(np.count_nonzero(pixels[:, outside, :]))
        if count:
            problems.append(f"{count} non-zero samples outside the ultrasound image regions")
    return problems


def is_dicom_file(path: str | Path) -> bool:
    """Whether a file starts like DICOM Part 10 ("DICM" after the 128-byte preamble)."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
