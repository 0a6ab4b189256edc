"""The report: level, ACR recommendation and findings built only from the report's fields."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from thyroid_monai.inference import InferenceSettings, InputImage, Prediction, build_report
from thyroid_monai.tirads import get_grouping

GROUPING = get_grouping("acr5")
MODEL = {"kind": "checkpoint", "name": "model.pt", "image_size": [64, 64]}

SOLID_HYPO_SMOOTH = {
    "desc_composition": np.array([0, 0, 0, 9.0, 0]),  # solid
    "desc_echogenicity": np.array([0, 0, 9.0, 0, 0]),  # hypo
    "desc_shape": np.array([9.0, 0]),  # wider than tall
    "desc_margin": np.array([9.0, 0, 0, 0, 0]),  # smooth
    "desc_foci": np.array([-9.0, -9.0, -9.0, -9.0]),
}
"""Descriptor-head logits of a solid, hypoechoic, wider-than-tall, smooth nodule without foci:
2 + 2 points, TR4."""


def probabilities(level_index: int) -> np.ndarray:
    values = np.full(5, 0.05)
    values[level_index] = 0.8
    return values


def image_with_nodule(spacing: tuple[float, float] | None) -> tuple[InputImage, np.ndarray]:
    """A 100x100 image with a 40-column by 20-row hypoechoic nodule (and a stray speck)."""
    pixels = np.full((100, 100), 160.0)
    mask = np.zeros((100, 100), dtype=bool)
    mask[40:60, 30:70] = True
    pixels[mask] = 110.0
    mask[2, 2] = True  # a second, tiny region: the largest one is reported
    return InputImage(Path("case.png"), "png", pixels, spacing, None), mask


def report_for(level_index: int, spacing: tuple[float, float] | None) -> dict:
    image, mask = image_with_nodule(spacing)
    prediction = Prediction(mask.astype(float), probabilities(level_index))
    report, kept = build_report(
        image, mask, prediction, MODEL, GROUPING, name="case", relative_input="case.png",
        deidentified=False, settings=InferenceSettings(),
    )  # fmt: skip
    assert kept.sum() == 800  # the 40x20 nodule without the stray speck
    return report


def test_follow_up_for_a_tr4_nodule_between_the_thresholds() -> None:
    report = report_for(3, (0.3, 0.3))  # 12 mm x 6 mm, diagonal about 13.4 mm
    assert report["schema_version"] == 1
    assert report["nodule"] == {"detected": True, "components": 2, "threshold": 0.5}
    assert report["measurements"]["transverse_mm"] == pytest.approx(12.0)
    assert report["measurements"]["ap_mm"] == pytest.approx(6.0)
    assert report["tirads"]["level"] == "TR4"
    assert report["tirads"]["probability"] == 0.8
    recommendation = report["recommendation"]
    assert recommendation["action"] == "follow_up"
    assert recommendation["follow_up_years"] == [1, 2, 3, 5]
    assert report["descriptors"]["source"] == "image_features"
    findings = report["findings"]
    assert "12.0 mm transverse by 6.0 mm anteroposterior" in findings
    assert "TR4 (probability 0.80)" in findings
    assert "follow-up ultrasound is recommended" in findings
    assert "Not assessed: margin" in findings
    assert any("largest" in warning for warning in report["warnings"])


def test_fna_and_none_follow_the_size_thresholds() -> None:
    assert report_for(4, (0.3, 0.3))["recommendation"]["action"] == "fna"  # TR5, >= 10 mm
    assert report_for(2, (0.3, 0.3))["recommendation"]["action"] == "none"  # TR3, < 15 mm
    assert report_for(0, (0.3, 0.3))["recommendation"]["action"] == "none"  # TR1, never


def test_unknown_spacing_gives_no_size_based_recommendation() -> None:
    report = report_for(4, None)
    assert report["measurements"]["transverse_mm"] is None
    assert report["measurements"]["transverse_px"] == 40
    assert report["recommendation"]["action"] == "size_unknown"
    assert "spacing is unknown" in report["recommendation"]["reason"]
    assert "size in millimetres is unknown" in report["findings"]
    assert "no size-based recommendation can be made" in report["findings"]
    assert any("spacing is unknown" in warning for warning in report["warnings"])


def test_findings_change_with_the_fields_only() -> None:
    report = report_for(3, (0.3, 0.3))
    report["tirads"]["class"] = "TR2"
    report["recommendation"]["reason"] = "edited"
    from thyroid_monai.inference import findings_text

    text = findings_text(report)
    assert "TR2 (probability" in text
    assert "edited" in text


def test_no_nodule_means_no_measurements() -> None:
    image, _ = image_with_nodule((0.3, 0.3))
    empty = np.zeros((100, 100), dtype=bool)
    report, _ = build_report(
        image, empty, Prediction(empty.astype(float), probabilities(3)), MODEL, GROUPING,
        name="case", relative_input=None, deidentified=False, settings=InferenceSettings(),
    )  # fmt: skip
    assert report["measurements"] is None
    assert report["descriptors"] is None
    assert report["recommendation"]["action"] == "size_unknown"
    assert report["findings"].startswith("No nodule was segmented")


def test_level_from_descriptor_points_without_a_level_head() -> None:
    image, mask = image_with_nodule((0.3, 0.3))
    heads = SOLID_HYPO_SMOOTH
    report, _ = build_report(
        image, mask, Prediction(None, None, heads), MODEL, None, name="case",
        relative_input=None, deidentified=False, settings=InferenceSettings(),
    )  # fmt: skip
    assert report["tirads"]["source"] == "descriptor_points"
    assert report["tirads"]["level"] == "TR4"  # 2 + 2 points
    assert "descriptor points give ACR TI-RADS TR4" in report["findings"]


def test_report_names_the_level_route_and_whether_the_descriptor_points_agree() -> None:
    image, mask = image_with_nodule((0.3, 0.3))
    heads = SOLID_HYPO_SMOOTH
    tr4 = np.array([0.05, 0.05, 0.1, 0.7, 0.1])
    for level_from, source in (("both", "level_head_and_acr_points_route"),
                               ("acr_points", "acr_points_route")):  # fmt: skip
        report, _ = build_report(
            image, mask, Prediction(mask.astype(float), tr4, heads),
            {**MODEL, "level_from": level_from}, GROUPING, name="case", relative_input=None,
            deidentified=False, settings=InferenceSettings(),
        )  # fmt: skip
        assert report["tirads"]["source"] == source
        assert report["tirads"]["level"] == "TR4"
        assert report["tirads"]["agrees_with_descriptor_points"] is True
    tr2 = np.array([0.05, 0.7, 0.1, 0.05, 0.1])
    report, _ = build_report(
        image, mask, Prediction(mask.astype(float), tr2, heads), {**MODEL, "level_from": "both"},
        GROUPING, name="case", relative_input=None, deidentified=False,
        settings=InferenceSettings(),
    )  # fmt: skip
    assert report["tirads"]["agrees_with_descriptor_points"] is False


def test_deidentification_is_on_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from thyroid_monai.inference import deidentification_options

    assert deidentification_options(keep_identifiers=True) is None
    monkeypatch.setenv("THYROID_MONAI_DEID_SALT", "from-env")
    options = deidentification_options()
    assert options is not None
    assert options.salt == "from-env"
    assert options.clean_pixel_data
    monkeypatch.delenv("THYROID_MONAI_DEID_SALT")
    first, second = deidentification_options(), deidentification_options()
    assert first is not None
    assert second is not None
    assert first.salt != second.salt  # a random salt per run


def test_a_kwak_class_gives_no_acr_recommendation() -> None:
    image, mask = image_with_nodule((0.3, 0.3))
    grouping = get_grouping("kwak6", "kwak")
    report, _ = build_report(
        image, mask, Prediction(mask.astype(float), np.full(6, 1 / 6)), MODEL, grouping,
        name="case", relative_input=None, deidentified=False, settings=InferenceSettings(),
    )  # fmt: skip
    assert report["tirads"]["class"] == "2"
    assert report["tirads"]["level"] is None
    assert report["recommendation"]["action"] is None
    assert "not an ACR level" in report["recommendation"]["reason"]
    assert "No recommendation: class 2 of the kwak6 grouping" in report["findings"]
