"""2D NIfTI images with their pixel spacing, in MONAI's x-first convention.

Arrays in memory are ``(rows, columns)`` = ``(y, x)``, as images are usually held. NIfTI and MONAI's
readers put x first, so the array is written transposed: MONAI's ``LoadImage`` then returns
``(x, y)``, the same layout it gives for PNG and JPEG files, and the header's pixel dimensions are
``(x_mm, y_mm)``. A file with unknown spacing gets unit pixel dimensions and unknown spatial units,
and the datalist records the spacing as ``null``: no code may read 1.0 as millimetres.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from thyroid_monai.io.files import atomic_path


def write_nifti_2d(
    path: str | Path,
    image: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    *,
    description: str = "",
) -> Path:
    """Writes a 2D image atomically as NIfTI-1.

    Args:
        path: Destination (``.nii.gz`` compresses; gzip timestamps are zeroed by nibabel, so the
            same array gives the same bytes).
        image: ``(rows, columns)`` array; ``uint8`` is kept, other types are written as they are.
        spacing_mm: ``(x, y)`` pixel spacing in millimetres, or ``None`` when unknown.
        description: Short text stored in the header (at most 79 characters).

    Returns:
        The path written.
    """
    if image.ndim != 2:
        raise ValueError(f"{path}: expected a 2D (rows, columns) array, got shape {image.shape}")
    known = spacing_mm is not None
    sx, sy = spacing_mm if spacing_mm is not None else (1.0, 1.0)
    if known and (sx <= 0 or sy <= 0):
        raise ValueError(f"{path}: pixel spacing must be positive, got {spacing_mm}")
    affine = np.diag([sx, sy, 1.0, 1.0])
    nifti = nib.Nifti1Image(np.ascontiguousarray(image.T), affine)
    nifti.header.set_xyzt_units("mm" if known else "unknown")
    nifti.header["descrip"] = description[:79].encode("ascii", "replace")
    with atomic_path(path) as temporary:
        nib.save(nifti, temporary)
    return Path(path)


def read_nifti_2d(path: str | Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """Reads a 2D NIfTI written by :func:`write_nifti_2d` (or any 2D NIfTI).

    Returns:
        The ``(rows, columns)`` array and the ``(x, y)`` spacing in mm, or ``None`` if the header's
        spatial unit is not millimetres.
    """
    nifti = nib.load(str(path))
    if not isinstance(nifti, nib.Nifti1Image | nib.Nifti2Image):
        raise ValueError(f"{path}: not a NIfTI image ({type(nifti).__name__})")
    data = np.asarray(nifti.dataobj)
    if data.ndim == 3 and data.shape[2] == 1:
        data = data[:, :, 0]
    if data.ndim != 2:
        raise ValueError(f"{path}: expected a 2D image, got shape {data.shape}")
    unit = nifti.header.get_xyzt_units()[0]
    zooms = nifti.header.get_zooms()
    spacing = (float(zooms[0]), float(zooms[1])) if unit == "mm" else None
    return data.T, spacing
