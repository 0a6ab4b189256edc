"""Finding and reading the images to infer on: ultrasound DICOM, NIfTI, PNG and JPEG.

Every reader returns a ``(rows, columns)`` gray-level image with its ``(x, y)`` pixel spacing in
millimetres, or ``None`` when the file does not say:

- DICOM: :func:`thyroid_monai.io.dicom.read_ultrasound` (tissue region crop, spacing from the
  ultrasound regions or Pixel Spacing, colour to gray); one frame of a cine (``frames``, default
  the middle one). A DICOM SEG in the folder is skipped, not failed: it is a mask, not an image;
- NIfTI: :func:`thyroid_monai.io.nifti.read_nifti_2d` (spacing when the header's unit is mm);
- PNG / JPEG: converted to 8-bit gray (BT.601 luma); these formats carry no physical spacing.

A file that cannot be read raises :class:`InputError` naming the file and the problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from thyroid_monai.io.deid import is_dicom_file
from thyroid_monai.io.dicom import (
    DicomReadError,
    FramePolicy,
    UltrasoundImage,
    read_dataset,
    read_ultrasound,
)
from thyroid_monai.io.errors import SafeMessageError, safe_reason

NIFTI_SUFFIXES = (".nii", ".nii.gz")
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
DICOM_SUFFIXES = (".dcm", ".dicom")
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PICTURE_MODES = ("L", "RGB", "RGBA", "P", "LA")


class InputError(SafeMessageError):
    """An input file that cannot be used (the message names it and the problem)."""


class NotAnImageError(InputError):
    """A file of a supported format that holds no image to infer on (a DICOM SEG)."""


@dataclass
class InputImage:
    """One image to infer on.

    Attributes:
        path: The file.
        kind: ``"dicom"``, ``"nifti"``, ``"png"`` or ``"jpeg"``.
        image: ``(rows, columns)`` gray levels (0-255 for 8-bit sources).
        spacing_mm: ``(x, y)`` pixel spacing in mm, or ``None`` when unknown.
        spacing_source: Where the spacing came from (``"regions"``, ``"pixel_spacing"``,
            ``"nifti"``) or ``None``.
        dicom: The DICOM read (header, crop, frame) for DICOM inputs.
    """

    path: Path
    kind: str
    image: np.ndarray
    spacing_mm: tuple[float, float] | None
    spacing_source: str | None
    dicom: UltrasoundImage | None = None

    @property
    def frame_number(self) -> int | None:
        """1-based DICOM frame used (``None`` for other formats)."""
        return self.dicom.frames[0].number if self.dicom else None


def _kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(".png"):
        return "png"
    if name.endswith((".jpg", ".jpeg")):
        return "jpeg"
    if name.endswith(DICOM_SUFFIXES) or is_dicom_file(path):
        return "dicom"
    return None


def discover_inputs(path: str | Path, *, exclude: Iterable[str | Path] = ()) -> list[Path]:
    """The files to infer on: ``path`` itself, or every supported file under a folder.

    Args:
        path: A file or a folder (searched recursively; hidden files and folders are skipped).
        exclude: Folders to leave out (the output folder when it lies inside the input).

    Returns:
        The files, sorted.

    Raises:
        FileNotFoundError: If ``path`` does not exist.
    """
    root = Path(path)
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise FileNotFoundError(f"input not found: {root}")
    excluded = [Path(e).resolve() for e in exclude]
    found = []
    for candidate in sorted(root.rglob("*")):
        relative = candidate.relative_to(root)
        if any(part.startswith(".") for part in relative.parts) or not candidate.is_file():
            continue
        resolved = candidate.resolve()
        if any(resolved.is_relative_to(folder) for folder in excluded):
            continue
        if _kind(candidate) is not None:
            found.append(candidate)
    return found


def _read_dicom(path: Path, frames: FramePolicy) -> InputImage:
    try:
        header = read_dataset(path, stop_before_pixels=True)
        if str(header.get("SOPClassUID", "")) == SEGMENTATION_STORAGE:
            raise NotAnImageError(f"{path}: a DICOM SEG (a mask, not an image)")
        read = read_ultrasound(path, frames=frames)
    except DicomReadError as error:
        raise InputError(str(error)) from None
    if len(read.frames) != 1:
        raise InputError(f"{path}: expected one frame with frames={frames!r}")
    return InputImage(
        path, "dicom", read.frames[0].image, read.spacing_mm, read.spacing_source, dicom=read
    )


def _read_nifti(path: Path) -> InputImage:
    from thyroid_monai.io.nifti import read_nifti_2d

    try:
        image, spacing = read_nifti_2d(path)
    except ValueError as error:
        raise InputError(str(error)) from None
    except Exception as error:  # nibabel raises many kinds of error for damaged files
        raise InputError(f"{path}: not a readable NIfTI file ({safe_reason(error)})") from None
    if not np.issubdtype(image.dtype, np.number):
        raise InputError(f"{path}: NIfTI data type {image.dtype} is not numeric")
    return InputImage(
        path, "nifti", np.asarray(image), spacing, "nifti" if spacing else None, dicom=None
    )


def _read_picture(path: Path, kind: str) -> InputImage:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as picture:
            picture.load()
            if picture.mode not in PICTURE_MODES:
                raise InputError(
                    f"{path}: unsupported {kind.upper()} mode {picture.mode} (8-bit gray or "
                    "colour expected)"
                )
            gray = np.asarray(picture.convert("L"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InputError(
            f"{path}: not a readable {kind.upper()} image ({safe_reason(error)})"
        ) from None
    return InputImage(path, kind, gray, None, None, dicom=None)


def read_input(path: str | Path, *, frames: FramePolicy = "middle") -> InputImage:
    """Reads one image file for inference.

    Args:
        path: A DICOM, NIfTI, PNG or JPEG file.
        frames: Which frame of a multi-frame DICOM to use (one frame: ``"middle"``, ``"first"``
            or a 1-based number).

    Returns:
        The image and its spacing.

    Raises:
        NotAnImageError: For a DICOM SEG.
        InputError: For an unsupported, unreadable or damaged file (names it and the problem).
    """
    path = Path(path)
    kind = _kind(path)
    if kind is None:
        raise InputError(f"{path}: unsupported file type (DICOM, NIfTI, PNG or JPEG expected)")
    if kind == "dicom":
        return _read_dicom(path, frames)
    if kind == "nifti":
        return _read_nifti(path)
    return _read_picture(path, kind)
