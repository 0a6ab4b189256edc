"""The TI-RADS-aligned radiomics features and their standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from thyroid_monai.radiomics import FEATURES, RadiomicsSettings, Standardisation, compute_features


def _nodule(height: int, width: int, level: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    image = rng.normal(120, 10, (80, 80)).clip(0, 255).astype(np.uint8)
    mask = np.zeros((80, 80), np.uint8)
    top, left = 40 - height // 2, 40 - width // 2
    mask[top : top + height, left : left + width] = 1
    image[mask > 0] = rng.normal(level, 5, int(mask.sum())).clip(0, 255).astype(np.uint8)
    return image, mask


def test_features_follow_the_pixels_and_the_spacing():
    image, mask = _nodule(20, 30)
    values = dict(zip(FEATURES, compute_features(image, mask, (0.1, 0.2)), strict=True))
    assert values["taller_than_wide"] == pytest.approx((20 * 0.2) / (30 * 0.1))  # mm, not pixels
    assert values["echogenicity_ratio"] == pytest.approx(60 / 120, abs=0.05)  # hypoechoic
    assert values["firstorder_Mean"] == pytest.approx(60, abs=1.5)
    assert values["anechoic_fraction"] == 0.0
    assert values["bright_spot_count"] == 0.0
    image[40, 40] = 255  # one punctate focus
    with_focus = dict(zip(FEATURES, compute_features(image, mask, (0.1, 0.2)), strict=True))
    assert with_focus["bright_spot_count"] == 1.0
    assert all(isinstance(v, float) for v in values.values())


def test_unknown_spacing_and_missing_masks_give_null_never_zero():
    image, mask = _nodule(20, 30)
    values = dict(zip(FEATURES, compute_features(image, mask, None), strict=True))
    in_mm = ("taller_than_wide", "echogenicity_ratio", "bright_spot_count", "shape2D_Elongation",
             "shape2D_PerimeterSurfaceRatio", "shape2D_Sphericity")  # fmt: skip
    for name in in_mm:
        assert values[name] is None, name
    assert values["firstorder_Median"] is not None
    assert compute_features(image, None, (0.1, 0.1)) == [None] * len(FEATURES)
    tiny = np.zeros_like(mask)
    tiny[1, 1] = 1
    assert compute_features(image, tiny, (0.1, 0.1), RadiomicsSettings()) == [None] * len(FEATURES)


def test_standardisation_uses_known_values_and_keeps_nulls():
    vectors = [[1.0, 5.0, None], [3.0, 5.0, None], [5.0, 5.0, 2.0]]
    stats = Standardisation.fit(vectors, features=("a", "b", "c"))
    assert stats.mean == (3.0, 5.0, 2.0)
    assert stats.count == (3, 3, 1)
    assert stats.std[1] == 1.0  # constant feature: unit scale, no division by zero
    assert stats.apply([5.0, 6.0, None]) == [pytest.approx(2.0 / np.std([1, 3, 5])), 1.0, None]
