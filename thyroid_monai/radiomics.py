"""The compact TI-RADS-aligned radiomics target set and its standardisation.

The features follow the proposal in ``docs/papers.md`` section 1.5, one or two per ACR category,
computed on the nodule mask of an 8-bit B-mode image:

=================  =====================================================================
category           features
=================  =====================================================================
composition        ``firstorder_10Percentile``, ``anechoic_fraction`` (custom)
echogenicity       ``firstorder_Mean``, ``firstorder_Median``, ``echogenicity_ratio`` (custom)
shape              ``shape2D_Elongation``, ``taller_than_wide`` (custom, in mm)
margin             ``shape2D_Sphericity``, ``shape2D_PerimeterSurfaceRatio``
echogenic foci     ``firstorder_90Percentile``, ``firstorder_Kurtosis``, ``bright_spot_count``
heterogeneity      ``glrlm_RunLengthNonUniformityNormalized``, ``glcm_Contrast``,
                   ``firstorder_Entropy``
=================  =====================================================================

pyradiomics computes the standard features (``force2D``, fixed bin width). The custom ones:

- ``anechoic_fraction``: share of mask pixels darker than ``anechoic_level``;
- ``echogenicity_ratio``: median inside the mask over the median of a ring ``ring_mm`` wide
  around it (about 1 iso-, above 1 hyper-, below 1 hypoechoic);
- ``taller_than_wide``: vertical (beam) extent over horizontal extent, in millimetres;
- ``bright_spot_count``: connected spots inside the mask that a white top-hat of
  ``spot_size_mm`` lifts by more than ``spot_contrast`` gray levels (punctate foci).

A feature that cannot be computed is ``None`` (JSON ``null``), never 0: every feature measured in
millimetres (shape features, the ring, the spot size) is ``None`` when the pixel spacing is
unknown, and all are ``None`` for a missing or too small mask.

Standardisation is a z-score with the mean and standard deviation of the training items only;
a feature that is constant there keeps a unit scale (its values become differences from the
mean) rather than dividing by zero.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage

FEATURES: tuple[str, ...] = (
    "firstorder_10Percentile",
    "anechoic_fraction",
    "firstorder_Mean",
    "firstorder_Median",
    "echogenicity_ratio",
    "shape2D_Elongation",
    "taller_than_wide",
    "shape2D_Sphericity",
    "shape2D_PerimeterSurfaceRatio",
    "firstorder_90Percentile",
    "firstorder_Kurtosis",
    "bright_spot_count",
    "glrlm_RunLengthNonUniformityNormalized",
    "glcm_Contrast",
    "firstorder_Entropy",
)
"""The target vector, in order."""

FEATURE_SET_VERSION = 1
"""Changes whenever a feature's definition changes (part of the cache key)."""

_PYRADIOMICS_FEATURES = {
    "firstorder": ["10Percentile", "Mean", "Median", "90Percentile", "Kurtosis", "Entropy"],
    "shape2D": ["Elongation", "Sphericity", "PerimeterSurfaceRatio"],
    "glrlm": ["RunLengthNonUniformityNormalized"],
    "glcm": ["Contrast"],
}
_NEEDS_SPACING = {"shape2D_Elongation", "shape2D_Sphericity", "shape2D_PerimeterSurfaceRatio"}


@dataclass(frozen=True)
class RadiomicsSettings:
    """Settings of the feature computation (recorded with the statistics).

    Attributes:
        bin_width: pyradiomics gray-level bin width on the 8-bit image.
        anechoic_level: Gray level below which a pixel counts as near-anechoic.
        ring_mm: Width of the peri-nodular ring of the echogenicity ratio.
        spot_size_mm: Largest bright spot counted as an echogenic focus.
        spot_contrast: Gray levels a spot must rise above its surroundings.
        min_mask_pixels: Smaller masks give no features.
    """

    bin_width: float = 25.0
    anechoic_level: float = 30.0
    ring_mm: float = 2.5
    spot_size_mm: float = 1.0
    spot_contrast: float = 40.0
    min_mask_pixels: int = 10

    def to_dict(self) -> dict[str, float | int]:
        """JSON-ready settings."""
        return asdict(self)


@lru_cache(maxsize=4)
def _extractor(settings: RadiomicsSettings) -> object:
    """One configured extractor per process and settings (building one costs more than a run)."""
    try:
        from radiomics import featureextractor
    except ImportError:
        raise ImportError(
            "radiomics targets need pyradiomics; install the 'radiomics' extra (see "
            "DEVELOPERS.md: pyradiomics 3.0.1 builds with pip install --no-build-isolation)"
        ) from None
    logging.getLogger("radiomics").setLevel(logging.ERROR)
    extractor = featureextractor.RadiomicsFeatureExtractor(
        binWidth=settings.bin_width, force2D=True, force2Ddimension=0, label=1
    )
    extractor.disableAllFeatures()
    extractor.enableFeaturesByName(**_PYRADIOMICS_FEATURES)
    return extractor


def _finite(value: float) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def compute_features(
    image: np.ndarray,
    mask: np.ndarray | None,
    spacing_mm: Sequence[float] | None,
    settings: RadiomicsSettings | None = None,
) -> list[float | None]:
    """The raw (unstandardised) target vector of one image, ordered as :data:`FEATURES`.

    Args:
        image: ``(rows, columns)`` 8-bit B-mode image.
        mask: ``(rows, columns)`` nodule mask (non-zero inside), or ``None``.
        spacing_mm: ``(x, y)`` pixel spacing, or ``None`` when unknown.
        settings: Feature settings.

    Returns:
        One value per feature, ``None`` where it cannot be computed.
    """
    settings = settings or RadiomicsSettings()
    if mask is None:
        return [None] * len(FEATURES)
    inside = np.asarray(mask) > 0
    if image.shape != inside.shape:
        raise ValueError(f"image shape {image.shape} differs from mask shape {inside.shape}")
    if inside.sum() < settings.min_mask_pixels:
        return [None] * len(FEATURES)
    values: dict[str, float | None] = dict(_pyradiomics(image, inside, spacing_mm, settings))
    values.update(_custom(image.astype(np.float64), inside, spacing_mm, settings))
    return [values.get(name) for name in FEATURES]


CUSTOM_FEATURES: tuple[str, ...] = (
    "anechoic_fraction",
    "echogenicity_ratio",
    "taller_than_wide",
    "bright_spot_count",
)
"""The features computed here rather than by pyradiomics."""


def custom_features(
    image: np.ndarray,
    mask: np.ndarray,
    spacing_mm: Sequence[float] | None,
    settings: RadiomicsSettings | None = None,
) -> dict[str, float | None]:
    """Only the custom features (no pyradiomics needed), keyed by :data:`CUSTOM_FEATURES`.

    Args:
        image: ``(rows, columns)`` 8-bit B-mode image.
        mask: ``(rows, columns)`` nodule mask (non-zero inside).
        spacing_mm: ``(x, y)`` pixel spacing, or ``None`` when unknown (the millimetre-based
            features are then ``None``).
        settings: Feature settings.

    Returns:
        Every custom feature; all ``None`` for a mask smaller than ``min_mask_pixels``.

    Raises:
        ValueError: If the image and mask shapes differ.
    """
    settings = settings or RadiomicsSettings()
    inside = np.asarray(mask) > 0
    if image.shape != inside.shape:
        raise ValueError(f"image shape {image.shape} differs from mask shape {inside.shape}")
    if inside.sum() < settings.min_mask_pixels:
        return dict.fromkeys(CUSTOM_FEATURES)
    return _custom(np.asarray(image, dtype=np.float64), inside, spacing_mm, settings)


def _pyradiomics(
    image: np.ndarray,
    inside: np.ndarray,
    spacing: Sequence[float] | None,
    settings: RadiomicsSettings,
) -> dict[str, float | None]:
    import SimpleITK as sitk

    extractor = _extractor(settings)
    sitk_image = sitk.GetImageFromArray(image.astype(np.float32)[None])
    sitk_mask = sitk.GetImageFromArray(inside.astype(np.uint8)[None])
    # pyradiomics needs some spacing; unknown spacing makes the mm-based features None below.
    for volume in (sitk_image, sitk_mask):
        volume.SetSpacing(
            (float(spacing[0]), float(spacing[1]), 1.0) if spacing else (1.0, 1.0, 1.0)
        )
    result = extractor.execute(sitk_image, sitk_mask)  # type: ignore[attr-defined]
    values: dict[str, float | None] = {}
    for key, value in result.items():
        if not key.startswith("original_"):
            continue
        name = key.removeprefix("original_")
        values[name] = None if (name in _NEEDS_SPACING and not spacing) else _finite(value)
    return values


def _custom(
    image: np.ndarray,
    inside: np.ndarray,
    spacing: Sequence[float] | None,
    settings: RadiomicsSettings,
) -> dict[str, float | None]:
    values: dict[str, float | None] = {
        "anechoic_fraction": float(np.mean(image[inside] < settings.anechoic_level))
    }
    if not spacing:
        values.update(taller_than_wide=None, echogenicity_ratio=None, bright_spot_count=None)
        return values
    sx, sy = float(spacing[0]), float(spacing[1])
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    height_mm = (rows[-1] - rows[0] + 1) * sy
    width_mm = (cols[-1] - cols[0] + 1) * sx
    values["taller_than_wide"] = height_mm / width_mm
    # The ring: outside pixels within ring_mm of the mask, by a distance transform in mm (a
    # dilation with a footprint that large costs several times the rest of the features).
    ring = ~inside & (
        ndimage.distance_transform_edt(~inside, sampling=(sy, sx)) <= settings.ring_mm
    )
    ring_median = float(np.median(image[ring])) if ring.any() else 0.0
    values["echogenicity_ratio"] = (
        float(np.median(image[inside])) / ring_median if ring_median > 0 else None
    )
    footprint = _ellipse(settings.spot_size_mm, sx, sy)
    tophat = ndimage.white_tophat(image, footprint=footprint)
    spots = (tophat > settings.spot_contrast) & inside
    values["bright_spot_count"] = float(ndimage.label(spots)[1])
    return values


def _ellipse(diameter_mm: float, sx: float, sy: float) -> np.ndarray:
    """Elliptic footprint of a physical diameter on anisotropic pixels (at least 3x3)."""
    rx = max(1, round(diameter_mm / 2 / sx))
    ry = max(1, round(diameter_mm / 2 / sy))
    y, x = np.ogrid[-ry : ry + 1, -rx : rx + 1]
    return (x / rx) ** 2 + (y / ry) ** 2 <= 1.0


@dataclass(frozen=True)
class Standardisation:
    """Per-feature z-score statistics fitted on training items."""

    features: tuple[str, ...]
    mean: tuple[float | None, ...]
    std: tuple[float, ...]
    count: tuple[int, ...]

    @classmethod
    def fit(
        cls, vectors: Sequence[Sequence[float | None]], features: Sequence[str] = FEATURES
    ) -> Standardisation:
        """Mean and standard deviation of each feature over the vectors where it is known."""
        means: list[float | None] = []
        stds, counts = [], []
        for index in range(len(features)):
            known = np.asarray(
                [v[index] for v in vectors if v[index] is not None], dtype=np.float64
            )
            counts.append(int(known.size))
            means.append(float(known.mean()) if known.size else None)
            spread = float(known.std()) if known.size > 1 else 0.0
            stds.append(spread if spread > 1e-12 else 1.0)  # constant feature: unit scale
        return cls(tuple(features), tuple(means), tuple(stds), tuple(counts))

    def apply(self, vector: Sequence[float | None]) -> list[float | None]:
        """The standardised vector (``None`` stays ``None``, as does a never-seen feature)."""
        return [
            None if value is None or mean is None else (value - mean) / std
            for value, mean, std in zip(vector, self.mean, self.std, strict=True)
        ]

    def to_dict(self) -> dict[str, object]:
        """JSON-ready statistics."""
        return {"features": list(self.features), "mean": list(self.mean), "std": list(self.std),
                "count": list(self.count)}  # fmt: skip
