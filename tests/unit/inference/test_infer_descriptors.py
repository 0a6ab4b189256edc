"""Descriptor estimates from image features and from descriptor heads."""

from __future__ import annotations

import numpy as np
import pytest

from thyroid_monai import descriptor_tasks
from thyroid_monai.inference import (
    DescriptorThresholds,
    descriptors_from_heads,
    estimate_descriptors,
)

SPACING = (0.2, 0.2)


def nodule_image(
    inside_level: float, *, height: int = 20, width: int = 40, spots: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Tissue at gray 160 with an elliptic nodule of ``inside_level`` (and bright spots)."""
    rows, cols = np.mgrid[0:96, 0:96]
    mask = ((rows - 48) / (height / 2)) ** 2 + ((cols - 48) / (width / 2)) ** 2 <= 1
    image = np.full((96, 96), 160.0)
    image[mask] = inside_level
    for index in range(spots):
        image[45 + 0 * index, 36 + 8 * index] = 255.0
    return image, mask


def test_dark_nodule_is_cystic_and_anechoic() -> None:
    image, mask = nodule_image(5.0)
    assessment = estimate_descriptors(image, mask, SPACING)
    findings = assessment.findings
    assert findings["composition"].value == "cystic"
    assert findings["echogenicity"].value == "anechoic"
    assert findings["shape"].value == "wider_than_tall"
    assert findings["margin"].value is None
    assert "not assessed" in findings["margin"].basis
    assert findings["foci"].value is None  # bright spots are not read as foci by default
    assert not assessment.complete
    assert assessment.level is None
    assert assessment.points_total == 0
    assert assessment.level_at_least == "TR1"


def test_solid_hypoechoic_taller_than_wide_nodule() -> None:
    image, mask = nodule_image(110.0, height=40, width=24)
    findings = estimate_descriptors(image, mask, SPACING).findings
    assert findings["composition"].value == "solid"
    assert findings["composition"].points == 2
    assert findings["echogenicity"].value == "hypo"
    assert findings["echogenicity"].points == 2
    assert findings["shape"].value == "taller_than_wide"
    assert findings["shape"].points == 3


def test_iso_and_very_hypo_follow_the_ratio_thresholds() -> None:
    iso = estimate_descriptors(*nodule_image(150.0), SPACING).findings["echogenicity"]
    very = estimate_descriptors(*nodule_image(60.0), SPACING).findings["echogenicity"]
    assert iso.value == "hyper_iso"
    assert very.value == "very_hypo"
    assert very.points == 3


def test_bright_spots_become_punctate_foci_when_asked() -> None:
    image, mask = nodule_image(110.0, spots=2)
    limits = DescriptorThresholds(foci_from_bright_spots=True)
    foci = estimate_descriptors(image, mask, SPACING, thresholds=limits).findings["foci"]
    assert foci.value == ["punctate"]
    assert foci.points == 3
    plain, plain_mask = nodule_image(110.0)
    none = estimate_descriptors(plain, plain_mask, SPACING, thresholds=limits).findings["foci"]
    assert none.value == []
    assert none.points == 0


def test_unknown_spacing_leaves_mm_based_categories_unassessed() -> None:
    image, mask = nodule_image(110.0)
    findings = estimate_descriptors(image, mask, None).findings
    assert findings["composition"].value == "solid"  # the anechoic fraction needs no spacing
    for category in ("echogenicity", "shape"):
        assert findings[category].value is None
        assert "spacing" in findings[category].basis


def test_threshold_order_is_checked() -> None:
    with pytest.raises(ValueError, match="mixed_fraction"):
        DescriptorThresholds(cystic_fraction=0.1, mixed_fraction=0.2)
    with pytest.raises(ValueError, match="very_hypo_ratio"):
        DescriptorThresholds(iso_ratio=0.3, very_hypo_ratio=0.5)


def one_hot(category: str, value: str) -> np.ndarray:
    names = descriptor_tasks.class_names(category)
    logits = np.full(len(names), -5.0)
    logits[names.index(value)] = 5.0
    return logits


def test_descriptor_heads_give_a_complete_assessment() -> None:
    outputs = {
        "desc_composition": one_hot("composition", "solid"),
        "desc_echogenicity": one_hot("echogenicity", "very_hypo"),
        "desc_shape": one_hot("shape", "wider_than_tall"),
        "desc_margin": one_hot("margin", "lobulated_irregular"),
        "desc_foci": np.array([-5.0, 5.0, -5.0, 5.0]),  # macrocalcification + punctate
    }
    assessment = descriptors_from_heads(outputs)
    assert assessment.source == "descriptor_heads"
    assert assessment.complete
    assert assessment.findings["foci"].value == ["macrocalcification", "punctate"]
    assert assessment.points_total == 2 + 3 + 0 + 2 + 4
    assert assessment.level == "TR5"
    with pytest.raises(KeyError, match="desc_margin"):
        descriptors_from_heads({k: v for k, v in outputs.items() if k != "desc_margin"})
