"""The per-image clinical report: its JSON layout and its plain-language findings.

Layout of ``report.json`` (``schema_version`` 1; a field that cannot be known is ``null``)::

    schema_version   1
    case             output name of the image (a hash for de-identified DICOM)
    input            kind (dicom|nifti|png|jpeg), file (relative input path; null for
                     de-identified DICOM), deidentified, shape [rows, columns], frame (DICOM),
                     spacing_mm [x, y] | null, spacing_source
    model            kind (checkpoint|torchscript|mlflow), name, image_size [x, y],
                     label_grouping, classes
    nodule           detected, components (before keeping the largest), threshold
    measurements     transverse_px, ap_px, area_px, transverse_mm, ap_mm, max_diameter_mm,
                     area_mm2, taller_than_wide (mm values null when the spacing is unknown)
    tirads           level (ACR "TR1".."TR5"), source (level_head | acr_points_route |
                     level_head_and_acr_points_route | descriptor_points |
                     image_feature_points), agrees_with_descriptor_points (models with
                     descriptor heads), class (predicted class name), probability,
                     probabilities {class: p}, levels_of_class
    descriptors      source (descriptor_heads | image_features), composition, echogenicity,
                     shape, margin, foci (each {value, points, basis}), points_total,
                     points_complete, level_from_points, level_at_least, features
    recommendation   action (fna | follow_up | none | size_unknown), level, max_diameter_mm,
                     fna_threshold_mm, follow_up_threshold_mm, follow_up_years, reason
    findings         the paragraph below, generated from the fields above only
    outputs          mask, overlay, report, segmentation, source_dicom (file names in the case
                     folder; null when not written)
    warnings         list of sentences

The findings paragraph is a function of the report's own fields (:func:`findings_text`), so it
cannot say anything the fields do not. The recommendation follows ACR's size thresholds for the
level (:func:`thyroid_monai.tirads.acr_recommendation`) with the maximum diameter; when the
predicted class groups several levels, the most severe of them is used (the conservative choice).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from thyroid_monai.inference.descriptors import DescriptorAssessment
from thyroid_monai.inference.measurements import NoduleMeasurements
from thyroid_monai.tirads import (
    ACR_LEVELS,
    ACR_SIZE_THRESHOLDS,
    LabelGrouping,
    Recommendation,
    acr_recommendation,
)

SCHEMA_VERSION = 1

_ACTION_TEXT = {
    Recommendation.FNA.value: "fine-needle aspiration (FNA) is recommended",
    Recommendation.FOLLOW_UP.value: "follow-up ultrasound is recommended",
    Recommendation.NONE.value: "no FNA or follow-up is recommended by size",
    Recommendation.SIZE_UNKNOWN.value: "no size-based recommendation can be made",
}
_VALUE_TEXT = {
    "hyper_iso": "hyper- or isoechoic",
    "hypo": "hypoechoic",
    "very_hypo": "very hypoechoic",
    "anechoic": "anechoic",
    "cystic": "cystic",
    "spongiform": "spongiform",
    "mixed": "mixed cystic and solid",
    "solid": "solid",
    "wider_than_tall": "wider than tall",
    "taller_than_wide": "taller than wide",
    "smooth": "smooth",
    "ill_defined": "ill-defined",
    "lobulated_irregular": "lobulated or irregular",
    "extrathyroidal_extension": "with extrathyroidal extension",
    "undetermined": "undetermined",
    "comet_tail": "comet-tail artefacts",
    "macrocalcification": "macrocalcifications",
    "peripheral_rim": "peripheral rim calcification",
    "punctate": "punctate echogenic foci",
}


LEVEL_SOURCES = {
    "direct": "level_head",
    "acr_points": "acr_points_route",
    "both": "level_head_and_acr_points_route",
}
"""Report ``source`` of the level for each ``level_from`` of the model."""


def level_section(
    probabilities: np.ndarray | None,
    grouping: LabelGrouping | None,
    descriptors: DescriptorAssessment | None,
    level_from: str = "direct",
) -> dict[str, Any]:
    """The TI-RADS level: from the model's level output when it has one, else from the points.

    Args:
        probabilities: The model's level probabilities.
        grouping: Their label grouping.
        descriptors: The descriptor assessment (points).
        level_from: The model's level route (``direct``, ``acr_points``, ``both``): the report's
            ``source`` says which produced the level. With descriptor heads the section also
            says whether the level agrees with the level of the descriptor points.
    """
    if probabilities is not None and grouping is not None:
        index = int(np.argmax(probabilities))
        levels = grouping.levels_of(index)
        acr = [level for level in levels if level in ACR_LEVELS]
        agrees = None
        if descriptors is not None and descriptors.source == "descriptor_heads":
            agrees = descriptors.level in levels
        return {
            "level": max(acr, key=ACR_LEVELS.index) if acr else None,
            "source": LEVEL_SOURCES.get(level_from, "level_head"),
            "agrees_with_descriptor_points": agrees,
            "class": grouping.class_names[index],
            "probability": round(float(probabilities[index]), 4),
            "probabilities": {
                name: round(float(p), 4)
                for name, p in zip(grouping.class_names, probabilities, strict=True)
            },
            "levels_of_class": list(levels),
        }
    if descriptors is None:
        return {"level": None, "source": None, "class": None, "probability": None,
                "probabilities": None, "levels_of_class": None}  # fmt: skip
    source = "descriptor_points" if descriptors.source == "descriptor_heads" else (
        "image_feature_points"
    )  # fmt: skip
    level = descriptors.level
    return {"level": level, "source": source, "class": level, "probability": None,
            "probabilities": None, "levels_of_class": [level] if level else None}  # fmt: skip


def recommendation_section(
    level: str | None, measurements: NoduleMeasurements | None, *, no_level_reason: str = ""
) -> dict[str, Any]:
    """ACR's recommendation for the level and the maximum diameter, with its reason.

    Args:
        level: ACR level, or ``None`` when there is none (no recommendation then).
        measurements: The nodule's size, or ``None`` when no nodule was segmented.
        no_level_reason: Why there is no level (for the report's reason).
    """
    diameter = measurements.max_diameter_mm if measurements else None
    diameter = None if diameter is None else round(diameter, 4)
    if level is None:
        reason = no_level_reason or "no ACR TI-RADS level is available"
        return {"action": None, "level": None, "max_diameter_mm": diameter,
                "fna_threshold_mm": None, "follow_up_threshold_mm": None,
                "follow_up_years": [], "reason": reason}  # fmt: skip
    action = acr_recommendation(level, diameter)
    thresholds = ACR_SIZE_THRESHOLDS[level]
    if thresholds.fna_mm is None:
        reason = f"{level} needs no FNA or follow-up at any size"
    elif diameter is None:
        missing = "no nodule was segmented" if measurements is None else "the spacing is unknown"
        reason = f"{level} depends on size, and the size is unknown because {missing}"
    elif action is Recommendation.FNA:
        reason = f"{diameter:.1f} mm is at or above the {thresholds.fna_mm:g} mm FNA threshold"
    elif action is Recommendation.FOLLOW_UP:
        reason = (
            f"{diameter:.1f} mm is at or above the {thresholds.follow_up_mm:g} mm follow-up "
            f"threshold and below the {thresholds.fna_mm:g} mm FNA threshold"
        )
    else:
        reason = (
            f"{diameter:.1f} mm is below the {thresholds.follow_up_mm:g} mm follow-up threshold"
        )
    return {
        "action": action.value,
        "level": level,
        "max_diameter_mm": diameter,
        "fna_threshold_mm": thresholds.fna_mm,
        "follow_up_threshold_mm": thresholds.follow_up_mm,
        "follow_up_years": list(thresholds.follow_up_years)
        if action is Recommendation.FOLLOW_UP
        else [],
        "reason": reason,
    }


def _describe(category: str, finding: Mapping[str, Any]) -> str | None:
    value = finding.get("value")
    if value is None:
        return None
    if category == "foci":
        return " and ".join(_VALUE_TEXT[v] for v in value) if value else "no echogenic foci"
    text = _VALUE_TEXT.get(str(value), str(value))
    return f"{text} margin" if category == "margin" else text


def findings_text(report: Mapping[str, Any]) -> str:
    """The plain-language findings, built only from the report's fields.

    Args:
        report: A report with the ``nodule``, ``measurements``, ``tirads``, ``descriptors`` and
            ``recommendation`` sections.

    Returns:
        A short paragraph.
    """
    sentences = []
    size = report["measurements"]
    if not report["nodule"]["detected"]:
        sentences.append("No nodule was segmented in this image.")
    elif size and size["transverse_mm"] is not None:
        shape = "taller than wide" if size["taller_than_wide"] > 1 else "wider than tall"
        sentences.append(
            f"A nodule measuring {size['transverse_mm']:.1f} mm transverse by "
            f"{size['ap_mm']:.1f} mm anteroposterior ({shape}; largest dimension "
            f"{size['max_diameter_mm']:.1f} mm) was segmented."
        )
    else:
        sentences.append(
            "A nodule was segmented; its size in millimetres is unknown because the image "
            "carries no pixel spacing."
        )
    descriptors = report.get("descriptors")
    if descriptors:
        categories = ("composition", "echogenicity", "shape", "margin", "foci")
        described = [t for c in categories if (t := _describe(c, descriptors[c])) is not None]
        missing = [c for c in categories if descriptors[c]["value"] is None]
        origin = "The descriptor heads" if descriptors["source"] == "descriptor_heads" else (
            "Image features"
        )  # fmt: skip
        if described:
            sentences.append(f"{origin} suggest: {', '.join(described)}.")
        if missing:
            sentences.append(
                f"Not assessed: {', '.join(missing)}; the {descriptors['points_total']} points "
                f"assessed are a lower bound (at least {descriptors['level_at_least']})."
            )
    tirads = report["tirads"]
    if tirads["level"] is not None:
        if tirads["source"] == "level_head":
            sentences.append(
                f"The model assigns ACR TI-RADS {tirads['class']} "
                f"(probability {tirads['probability']:.2f})."
            )
        else:
            sentences.append(f"The descriptor points give ACR TI-RADS {tirads['level']}.")
    recommendation = report["recommendation"]
    if recommendation["action"] is not None:
        action = _ACTION_TEXT[recommendation["action"]]
        sentences.append(f"For {recommendation['level']}, {action}: {recommendation['reason']}.")
    else:
        sentences.append(f"No recommendation: {recommendation['reason']}.")
    return " ".join(sentences)
