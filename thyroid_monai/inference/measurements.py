"""Nodule measurements in millimetres from a mask and the pixel spacing.

On a transverse ultrasound view, ACR measures the nodule's largest transverse (horizontal) extent
and its anteroposterior (vertical, along the beam) extent; taller-than-wide is AP over transverse.
Here both extents are the mask's bounding box along the image axes, counted in whole pixels
(``(last - first + 1) * spacing``), the way :meth:`PhantomCase.nodule_size_mm` defines the
phantom's known size. The largest dimension that ACR's size thresholds use can be oblique, so
``max_diameter_mm`` is the maximum Feret diameter: the longest distance between the corners of
the mask's pixels, in millimetres.

When the spacing is unknown nothing is given in millimetres, and taller-than-wide is ``None`` as
well (pixels need not be square); the extents in pixels are still reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError


@dataclass(frozen=True)
class NoduleMeasurements:
    """Size of one segmented nodule.

    Attributes:
        transverse_px: Horizontal extent in pixels.
        ap_px: Vertical (anteroposterior) extent in pixels.
        area_px: Pixels inside the mask.
        transverse_mm: Horizontal extent in mm (``None`` when the spacing is unknown).
        ap_mm: Vertical extent in mm.
        max_diameter_mm: Maximum Feret diameter in mm.
        area_mm2: Area in square millimetres.
        taller_than_wide: ``ap_mm / transverse_mm``; above 1 is taller than wide.
    """

    transverse_px: int
    ap_px: int
    area_px: int
    transverse_mm: float | None
    ap_mm: float | None
    max_diameter_mm: float | None
    area_mm2: float | None
    taller_than_wide: float | None

    def to_dict(self) -> dict[str, float | int | None]:
        """JSON-ready values (floats rounded to 4 decimals)."""
        return {
            key: round(value, 4) if isinstance(value, float) else value
            for key, value in asdict(self).items()
        }


def largest_component(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The largest 8-connected component of a binary mask.

    Returns:
        The component as a boolean ``(rows, columns)`` array (all ``False`` for an empty mask)
        and the number of components found.
    """
    inside = np.asarray(mask) > 0
    labels, count = ndimage.label(inside, structure=np.ones((3, 3), dtype=bool))
    if count <= 1:
        return inside, int(count)
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1), int(count)


def _max_feret_mm(inside: np.ndarray, sx: float, sy: float) -> float:
    """Longest distance between two pixel corners of the mask, in millimetres."""
    rows, cols = np.nonzero(inside)
    corners = np.concatenate(
        [np.stack([(cols + dx) * sx, (rows + dy) * sy], axis=1) for dx in (0, 1) for dy in (0, 1)]
    )
    try:
        points = corners[ConvexHull(corners).vertices]
    except QhullError:  # collinear corners cannot happen for whole pixels, but stay safe
        points = corners
    differences = points[:, None, :] - points[None, :, :]
    return float(np.sqrt((differences**2).sum(axis=-1)).max())


def measure_nodule(
    mask: np.ndarray, spacing_mm: Sequence[float] | None
) -> NoduleMeasurements | None:
    """Measures the nodule in a ``(rows, columns)`` mask.

    Args:
        mask: Non-zero inside the nodule (measure one component: see :func:`largest_component`).
        spacing_mm: ``(x, y)`` pixel spacing in mm, or ``None`` when unknown.

    Returns:
        The measurements, or ``None`` for an empty mask.

    Raises:
        ValueError: For a mask that is not 2D or a spacing that is not positive.
    """
    inside = np.asarray(mask) > 0
    if inside.ndim != 2:
        raise ValueError(f"expected a 2D (rows, columns) mask, got shape {inside.shape}")
    if not inside.any():
        return None
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    transverse_px = int(cols[-1] - cols[0] + 1)
    ap_px = int(rows[-1] - rows[0] + 1)
    area_px = int(inside.sum())
    if spacing_mm is None:
        return NoduleMeasurements(transverse_px, ap_px, area_px, None, None, None, None, None)
    sx, sy = float(spacing_mm[0]), float(spacing_mm[1])
    if sx <= 0 or sy <= 0:
        raise ValueError(f"pixel spacing must be positive, got {tuple(spacing_mm)}")
    transverse_mm, ap_mm = transverse_px * sx, ap_px * sy
    return NoduleMeasurements(
        transverse_px=transverse_px,
        ap_px=ap_px,
        area_px=area_px,
        transverse_mm=transverse_mm,
        ap_mm=ap_mm,
        max_diameter_mm=_max_feret_mm(inside, sx, sy),
        area_mm2=area_px * sx * sy,
        taller_than_wide=ap_mm / transverse_mm,
    )
