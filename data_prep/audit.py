"""The PHI audit: scans a prepared dataset and fails on any identifying attribute left.

Every DICOM file under the folder is checked with :func:`thyroid_monai.io.deid.audit_dataset`
(the basic profile's attributes, private tags, overlays, pseudonyms, remapped UIDs, pixels outside
the ultrasound regions); every NIfTI file must carry no header extension (extensions can embed a
whole DICOM header) and no free text beyond what the converters write.

Given the identifiers of the source (the patient names, IDs and institutions of the DICOM files a
dataset was prepared from, :func:`source_identifiers`), every file under the folder, whatever its
format (checkpoints, MLflow stores and artifacts, logs, configs), is also searched for them.

A damaged file, in the folder or in the source, is reported as a problem, never crashed on: what
cannot be read cannot be shown to be clean, and a source whose identifiers cannot be read leaves
the search incomplete.
"""

from __future__ import annotations

import contextlib
import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

from thyroid_monai.io.deid import audit_dataset, is_dicom_file
from thyroid_monai.io.dicom import DicomReadError, read_dataset
from thyroid_monai.io.errors import safe_reason

# Shorter values (initials, short numbers) occur by chance in binary files such as checkpoints.
MIN_IDENTIFIER_LENGTH = 6
# The attributes whose values are searched for in outputs. Dates and times are left out: as digit
# strings they occur by chance in binary files.
IDENTIFYING_ATTRIBUTES = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "AccessionNumber",
    "StationName",
)


@dataclass
class AuditReport:
    """Files checked and the problems found (``path: problem``)."""

    dicom_files: int = 0
    nifti_files: int = 0
    searched_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No problem found (and at least one file checked)."""
        return not self.problems and (self.dicom_files + self.nifti_files + self.searched_files) > 0


@dataclass
class SourceIdentifiers:
    """The identifying values of a source folder and the files that could not be read."""

    values: list[str]
    unreadable: list[tuple[str, str]]
    """``(path relative to the source, reason)`` of each DICOM file whose header is damaged."""


def read_source_identifiers(source: str | Path) -> SourceIdentifiers:
    """The identifying values of the DICOM files under ``source`` (names, IDs, institutions).

    Person names are also given with spaces in place of DICOM's ``^`` separators. Values shorter
    than ``MIN_IDENTIFIER_LENGTH`` are left out. Only the top-level identifying attributes are
    read (``specific_tags``), so a damaged or deeply nested sequence elsewhere does not stop the
    reading; a file that still cannot be read is listed in ``unreadable``, never raised.

    Raises:
        FileNotFoundError: If ``source`` is not a folder.
    """
    import pydicom

    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"source folder not found: {source}")
    found: set[str] = set()
    unreadable: list[tuple[str, str]] = []
    for path in sorted(p for p in source.rglob("*") if p.is_file() and is_dicom_file(p)):
        try:
            dataset = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=list(IDENTIFYING_ATTRIBUTES)
            )
            for keyword in IDENTIFYING_ATTRIBUTES:
                element = dataset.get(keyword)
                values = element if isinstance(element, pydicom.multival.MultiValue) else [element]
                for value in values:
                    text = str(value or "").strip()
                    found.update({text, text.replace("^", " ").strip()})
        except Exception as error:  # RecursionError, wrong VRs, bad lengths: report, go on
            unreadable.append((path.relative_to(source).as_posix(), safe_reason(error)))
    values = sorted(v for v in found if len(v) >= MIN_IDENTIFIER_LENGTH)
    return SourceIdentifiers(values, unreadable)


def source_identifiers(source: str | Path) -> list[str]:
    """The identifying values of :func:`read_source_identifiers` (damaged files left out).

    Raises:
        FileNotFoundError: If ``source`` is not a folder.
    """
    return read_source_identifiers(source).values


def _searchable(path: Path) -> bytes:
    """The bytes of a file (decompressed when gzip), lower-cased for a case-blind search."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        # a damaged archive is still searched, byte by byte as stored
        with contextlib.suppress(OSError, EOFError, zlib.error):
            data = gzip.decompress(data)
    return data.lower()


def audit_folder(root: str | Path, identifiers: Sequence[str] = ()) -> AuditReport:
    """Audits every DICOM and NIfTI file under ``root``; searches every file for ``identifiers``.

    Args:
        root: The folder.
        identifiers: Values that must appear nowhere (case-blind); a finding names the file and
            the value's position in this list, never the value itself.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
        ValueError: If an identifier is too short to be searched for reliably.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder to audit not found: {root}")
    short = [i + 1 for i, value in enumerate(identifiers) if len(value) < MIN_IDENTIFIER_LENGTH]
    if short:
        raise ValueError(
            f"identifiers {short} are shorter than {MIN_IDENTIFIER_LENGTH} characters and would "
            "match by chance in binary files"
        )
    needles = [value.lower().encode("utf-8") for value in identifiers]
    report = AuditReport()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if needles:
            report.searched_files += 1
            data = _searchable(path)
            report.problems.extend(
                f"{relative}: holds identifier {index + 1} of the list"
                for index, needle in enumerate(needles)
                if needle in data
            )
        report.problems.extend(f"{relative}: {problem}" for problem in _audit_file(path, report))
    return report


def _audit_file(path: Path, report: AuditReport) -> list[str]:
    """The problems of one NIfTI or DICOM file; a damaged file is a problem, never a crash."""
    try:
        if path.name.endswith((".nii", ".nii.gz")):
            report.nifti_files += 1
            header = nib.load(str(path)).header
            return (
                ["NIfTI header extension present"] if len(getattr(header, "extensions", [])) else []
            )
        if is_dicom_file(path):
            report.dicom_files += 1
            try:
                dataset = read_dataset(path)
            except DicomReadError as error:
                return [str(error).removeprefix(f"{path}: ")]
            return audit_dataset(dataset)
    except Exception as error:  # a damaged output cannot be shown to be clean
        return [f"cannot be audited ({safe_reason(error)})"]
    return []
