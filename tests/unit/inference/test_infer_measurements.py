"""Nodule measurements: extents in whole pixels, Feret diameter, unknown spacing, components."""

from __future__ import annotations

import math

import numpy as np
import pytest

from thyroid_monai.inference import largest_component, measure_nodule


def rectangle(rows: int, cols: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((rows, cols), dtype=bool)
    mask[5 : 5 + height, 7 : 7 + width] = True
    return mask


def test_extents_use_each_axis_spacing() -> None:
    size = measure_nodule(rectangle(40, 50, 10, 20), (0.5, 0.25))
    assert size is not None
    assert (size.transverse_px, size.ap_px, size.area_px) == (20, 10, 200)
    assert size.transverse_mm == pytest.approx(10.0)
    assert size.ap_mm == pytest.approx(2.5)
    assert size.taller_than_wide == pytest.approx(0.25)
    assert size.area_mm2 == pytest.approx(200 * 0.125)
    # The Feret diameter of a rectangle is its diagonal (pixel corners included).
    assert size.max_diameter_mm == pytest.approx(math.hypot(10.0, 2.5))


def test_oblique_nodule_has_a_diameter_longer_than_either_extent() -> None:
    mask = np.eye(30, dtype=bool)
    size = measure_nodule(mask, (1.0, 1.0))
    assert size is not None
    assert size.max_diameter_mm == pytest.approx(30 * math.sqrt(2))
    assert size.max_diameter_mm > max(size.transverse_mm or 0, size.ap_mm or 0)


def test_unknown_spacing_gives_pixels_only() -> None:
    size = measure_nodule(rectangle(20, 20, 4, 6), None)
    assert size is not None
    assert (size.transverse_px, size.ap_px) == (6, 4)
    assert size.transverse_mm is None
    assert size.max_diameter_mm is None
    assert size.taller_than_wide is None


def test_empty_mask_and_bad_input() -> None:
    assert measure_nodule(np.zeros((8, 8)), (1.0, 1.0)) is None
    with pytest.raises(ValueError, match="positive"):
        measure_nodule(rectangle(20, 20, 4, 6), (0.0, 1.0))
    with pytest.raises(ValueError, match="2D"):
        measure_nodule(np.ones((2, 3, 4)), None)


def test_largest_component_keeps_the_biggest_region() -> None:
    mask = np.zeros((20, 20), dtype=bool)
    mask[1:3, 1:3] = True
    mask[10:16, 10:18] = True
    kept, count = largest_component(mask)
    assert count == 2
    assert kept.sum() == 48
    assert kept[12, 12]
    assert not kept[1, 1]
