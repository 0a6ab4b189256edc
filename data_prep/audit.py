"""The PHI audit: scans a prepared dataset and fails on any identifying attribute left.

Every DICOM file under the folder is checked with :func:`thyroid_monai.io.deid.audit_dataset`
(the basic profile's attributes, private tags, overlays, pseudonyms, remapped UIDs, pixels outside
the ultrasound regions); every NIfTI file must carry no header extension (extensions can embed a
whole DICOM header) and no free text beyond what the converters write.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib

from thyroid_monai.io.deid import audit_dataset, is_dicom_file
from thyroid_monai.io.dicom import DicomReadError, read_dataset


@dataclass
class AuditReport:
    """Files checked and the problems found (``path: problem``)."""

    dicom_files: int = 0
    nifti_files: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        """No problem found (and at least one file checked)."""
        return not self.problems and (self.dicom_files + self.nifti_files) > 0


def audit_folder(root: str | Path) -> AuditReport:
    """Audits every DICOM and NIfTI file under ``root``.

    Raises:
        FileNotFoundError: If ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"folder to audit not found: {root}")
    report = AuditReport()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        relative = path.relative_to(root).as_posix()
        if path.name.endswith((".nii", ".nii.gz")):
            report.nifti_files += 1
            header = nib.load(str(path)).header
            if len(getattr(header, "extensions", [])):
                report.problems.append(f"{relative}: NIfTI header extension present")
        elif is_dicom_file(path):
            report.dicom_files += 1
            try:
                dataset = read_dataset(path)
            except DicomReadError as error:
                report.problems.append(f"{relative}: {error}")
                continue
            report.problems.extend(f"{relative}: {problem}" for problem in audit_dataset(dataset))
    return report
