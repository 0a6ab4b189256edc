"""DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile.

:func:`deidentify` applies the profile's action to every attribute of Table E.1-1 (kept in
``data/confidentiality_profile.csv``), at every nesting level:

- ``X`` remove, ``Z`` empty value, ``D`` a dummy value of the right VR (a sequence keeps its
  items, cleaned recursively), ``U`` a new UID, the same for the same UID and salt
  (``generate_uid(entropy_srcs=[salt, uid])``), ``U*`` keeps a sequence and remaps the UIDs in it,
  ``K`` keep;
- where the table offers alternatives the choice never breaks the IOD whatever the attribute's
  type: ``X/Z`` -> ``Z``, ``X/D``, ``Z/D``, ``X/Z/D`` -> ``D``, ``X/Z/U*`` -> ``U*``;
- private attributes, overlays (groups 60xx) and curves (50xx) are removed whole;
- Patient ID and Patient's Name get the same pseudonym, ``ANON-`` and 12 hex digits of a salted
  hash of the original Patient ID, so images of one patient stay together for patient-level splits
  while the identity cannot be recovered without the salt.

Options (each recorded in the De-identification Method Code Sequence, CID 7050):

- Clean Pixel Data (113101, on by default): every sample outside the Sequence of Ultrasound
  Regions is set to 0 in every frame, pixel data are stored uncompressed, and
  ``BurnedInAnnotation`` becomes ``NO``. Scanners burn text into the frame around the image
  regions; text inside a region would need OCR and is out of scope. A file with burned-in
  annotation and no regions cannot be cleaned and is refused;
- Retain Longitudinal Temporal Information with Modified Dates (113107): dates are moved back by
  the same whole number of days (1 to ``max_date_shift_days``, from the salt and the patient) in
  every file of a patient, times are kept, so intervals survive; with Full Dates (113106) they
  are kept as they are;
- Retain Patient Characteristics (113108), Device Identity (113109), Institution Identity
  (113112). Free-text attributes the profile would "clean" under an option are removed instead.

:func:`audit_dataset` checks a file against the same rules (reading the options from its code
sequence) and lists every identifying attribute left, plus non-zero pixels outside the regions.
"""

from __future__ import annotations

import copy
import csv
import datetime
import fnmatch
import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import BaseTag
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from thyroid_monai.io.dicom import ultrasound_regions

UID_ROOT = "1.2.826.0.1.3680043.8.498."
"""Root of the remapped UIDs (pydicom's, used by ``generate_uid`` with entropy sources)."""

PSEUDONYM_PATTERN = re.compile(r"^ANON-[0-9a-f]{12}$")

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


class DeidentificationError(ValueError):
    """A dataset that cannot be de-identified as asked (the message says why)."""


@dataclass(frozen=True)
class ProfileEntry:
    """One row of Table E.1-1: the basic action and the actions of the options."""

    basic: str
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeidentificationOptions:
    """How to de-identify.

    Attributes:
        salt: Secret that makes UIDs, pseudonyms and date shifts consistent across files and
            runs; keep it private (with it, a known Patient ID can be linked to its pseudonym).
        clean_pixel_data: Blank everything outside the ultrasound regions.
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
    """Table E.1-1 keyed by ``GGGGEEEE`` (upper case; ``x`` wildcards for repeating groups)."""
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
        table[row["tag"].upper().replace("X", "x")] = ProfileEntry(row["basic"], options)
    return table


def _entry_for(tag: BaseTag) -> ProfileEntry | None:
    table = confidentiality_profile()
    key = f"{tag:08X}"
    if key in table:
        return table[key]
    for pattern, entry in table.items():
        if "x" in pattern and fnmatch.fnmatchcase(key, pattern.replace("x", "?")):
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


class _Deidentifier:
    def __init__(self, options: DeidentificationOptions, patient_id: str):
        self.options = options
        self.enabled = ["basic", *options.enabled]
        self.pseudonym = pseudonym(patient_id, options.salt)
        self.shift = date_shift_days(patient_id, options.salt, options.max_date_shift_days)

    def clean(self, dataset: Dataset) -> None:
        for element in list(dataset):
            tag = element.tag
            if tag.is_private or _is_overlay_or_curve(tag):
                del dataset[tag]
                continue
            entry = _entry_for(tag)
            action = effective_action(entry, self.enabled) if entry else "K"
            self.apply(dataset, element, action)

    def apply(self, dataset: Dataset, element: DataElement, action: str) -> None:
        tag, vr = element.tag, element.VR
        if action == "X":
            del dataset[tag]
        elif action == "Z":
            element.value = DicomSequence() if vr == "SQ" else ("" if vr in DUMMY_VALUES else None)
        elif action == "D":
            if vr == "SQ":
                self._recurse(element)
            elif vr == "UI":
                element.value = remap_uid(str(element.value), self.options.salt)
            else:
                element.value = DUMMY_VALUES.get(vr)
        elif action == "U":
            values = element.value if element.VM > 1 else [element.value]
            remapped = [remap_uid(str(v), self.options.salt) for v in values if v]
            element.value = remapped if element.VM > 1 else (remapped[0] if remapped else "")
        elif action == "C":  # modified dates (the only cleaning done here)
            element.value = self._shifted(element)
        elif vr == "SQ":  # "K" and "U*": keep the sequence, clean what it holds
            self._recurse(element)

    def _recurse(self, element: DataElement) -> None:
        for item in element.value:
            self.clean(item)

    def _shifted(self, element: DataElement) -> object:
        if element.VR not in ("DA", "DT") or not element.value:
            return element.value  # times and offsets keep their value; intervals survive
        values = element.value if element.VM > 1 else [element.value]
        try:
            shifted = [_shift_date(str(v), self.shift) for v in values]
        except ValueError:
            return ""  # an unreadable date cannot be shifted, so it goes
        return shifted if element.VM > 1 else shifted[0]


def clean_pixel_data(dataset: Dataset) -> None:
    """Sets every sample outside the ultrasound regions to 0 and stores the pixels uncompressed.

    Raises:
        DeidentificationError: If the file has burned-in annotation but no regions to keep.
    """
    regions = ultrasound_regions(dataset)
    if not regions:
        if str(dataset.get("BurnedInAnnotation", "")).upper() == "NO":
            return
        raise DeidentificationError(
            "pixel data cannot be cleaned: no Sequence of Ultrasound Regions and burned-in "
            "annotation is not 'NO'"
        )
    if dataset.file_meta.TransferSyntaxUID.is_compressed:
        # YBR becomes RGB here; the photometric interpretation follows. The instance keeps its
        # UID (pydicom would draw a random one), which the salted remapping then replaces: the
        # same salt gives the same UIDs on every run, and references to this instance still hold.
        dataset.decompress(generate_instance_uid=False)
    pixels = dataset.pixel_array.copy()
    keep = outside_regions_mask(regions, int(dataset.Rows), int(dataset.Columns)) == 0
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    samples = int(dataset.SamplesPerPixel)
    view = pixels.reshape((frames, int(dataset.Rows), int(dataset.Columns), samples))
    view[:, ~keep, :] = 0
    dataset.PixelData = np.ascontiguousarray(view.reshape(pixels.shape)).tobytes()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.BurnedInAnnotation = "NO"


def outside_regions_mask(regions: list, rows: int, columns: int) -> np.ndarray:
    """``True`` where a pixel lies outside every region."""
    outside = np.ones((rows, columns), dtype=bool)
    for region in regions:
        min_x, min_y, max_x, max_y = region.bounds
        outside[min_y : max_y + 1, min_x : max_x + 1] = False
    return outside


def deidentify(dataset: Dataset, options: DeidentificationOptions) -> Dataset:
    """A de-identified copy of ``dataset`` (the input is left unchanged).

    Raises:
        DeidentificationError: If the pixels cannot be cleaned as asked.
    """
    result = copy.deepcopy(dataset)
    patient_id = str(dataset.get("PatientID", "") or "")
    worker = _Deidentifier(options, patient_id)
    if options.clean_pixel_data and "PixelData" in result:
        clean_pixel_data(result)
    worker.clean(result)
    meta = result.file_meta
    if "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = UID(
            remap_uid(meta.MediaStorageSOPInstanceUID, options.salt)
        )
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
    return result


def _options_of(dataset: Dataset) -> list[str]:
    by_code = {code: name for name, (code, _) in OPTION_CODES.items()}
    return [
        by_code[str(item.get("CodeValue"))]
        for item in dataset.get("DeidentificationMethodCodeSequence", [])
        if str(item.get("CodeValue")) in by_code
    ]


def _iter_elements(dataset: Dataset, path: str = "") -> Iterator[tuple[str, DataElement]]:
    for element in dataset:
        name = element.keyword or f"({element.tag.group:04X},{element.tag.element:04X})"
        where = f"{path}{name}"
        yield where, element
        if element.VR == "SQ":
            for index, item in enumerate(element.value):
                yield from _iter_elements(item, f"{where}[{index}].")


def audit_dataset(dataset: Dataset) -> list[str]:
    """Every identifying attribute or pixel that remains in a de-identified dataset.

    Returns:
        Human-readable problems; empty when the dataset passes.
    """
    problems = []
    if str(dataset.get("PatientIdentityRemoved", "")).upper() != "YES":
        problems.append("PatientIdentityRemoved is not YES")
    enabled = _options_of(dataset)
    if "basic" not in enabled:
        problems.append("no De-identification Method Code Sequence naming the basic profile")
    for where, element in _iter_elements(dataset):
        tag = element.tag
        if tag.is_private:
            problems.append(f"{where}: private attribute left")
            continue
        if _is_overlay_or_curve(tag):
            problems.append(f"{where}: overlay or curve left")
            continue
        if tag in (0x00100010, 0x00100020):
            if not PSEUDONYM_PATTERN.match(str(element.value or "")):
                problems.append(f"{where}: '{element.value}' is not a pseudonym")
            continue
        entry = _entry_for(tag)
        if entry is None or element.VR == "SQ" or element.value in (None, "", b""):
            continue
        action = effective_action(entry, enabled)
        values = [str(v) for v in (element.value if element.VM > 1 else [element.value])]
        if action == "X":
            problems.append(f"{where}: should have been removed")
        elif action == "Z":
            problems.append(f"{where}: should be empty")
        elif action == "D" and any(v != DUMMY_VALUES.get(element.VR, "") for v in values):
            if not (element.VR == "UI" and all(v.startswith(UID_ROOT) for v in values)):
                problems.append(f"{where}: should hold a dummy value")
        elif action == "U" and not all(v.startswith(UID_ROOT) for v in values):
            problems.append(f"{where}: UID was not remapped")
    if "clean_pixel_data" in enabled and "PixelData" in dataset:
        problems.extend(_audit_pixels(dataset))
    return problems


def _audit_pixels(dataset: Dataset) -> list[str]:
    problems = []
    if str(dataset.get("BurnedInAnnotation", "")).upper() != "NO":
        problems.append("BurnedInAnnotation is not NO")
    regions = ultrasound_regions(dataset)
    if regions:
        outside = outside_regions_mask(regions, int(dataset.Rows), int(dataset.Columns))
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        pixels = dataset.pixel_array.reshape(
            (frames, int(dataset.Rows), int(dataset.Columns), int(dataset.SamplesPerPixel))
        )
        count = int(np.count_nonzero(pixels[:, outside, :]))
        if count:
            problems.append(f"{count} non-zero samples outside the ultrasound regions")
    return problems


def is_dicom_file(path: str | Path) -> bool:
    """Whether a file starts like DICOM Part 10 ("DICM" after the 128-byte preamble)."""
    try:
        with Path(path).open("rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False
