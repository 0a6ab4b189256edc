"""ACR descriptors of a segmented nodule: from the model's descriptor heads, or from the image.

A model trained with descriptor heads (``use_descriptors``) predicts all five categories; its
predictions are used as they are. Otherwise four categories are estimated from the custom
radiomics features of :mod:`thyroid_monai.radiomics` on the image and the predicted mask:

=============  ==========================  =====================================================
category       feature                     rule (thresholds in :class:`DescriptorThresholds`)
=============  ==========================  =====================================================
composition    ``anechoic_fraction``       >= ``cystic_fraction``: cystic; >= ``mixed_fraction``:
                                           mixed cystic and solid; else solid
echogenicity   ``echogenicity_ratio``      cystic: anechoic; >= ``iso_ratio``: hyper/iso;
                                           >= ``very_hypo_ratio``: hypo; else very hypo
shape          ``taller_than_wide`` (mm)   > ``taller_ratio``: taller than wide
foci           ``bright_spot_count``       only with ``foci_from_bright_spots``: >=
                                           ``min_bright_spots``: punctate foci; else none
margin         (none)                      not assessed
=============  ==========================  =====================================================

The default thresholds were read off the phantom's truth (120 images, seed 11, 256x256, truth
masks; 10th-90th percentiles): anechoic fraction solid 0.00-0.03, mixed 0.04-0.40, cystic
0.46-0.90; echogenicity ratio very hypo 0.24-0.50, hypo 0.64-0.86, hyper/iso 0.69-1.04 (hypo and
iso overlap: the weakest of the rules); taller-than-wide 1.13-1.49 against 0.59-0.85 (clean).
The bright-spot count did **not** separate foci on the same images (no foci 32-240 spots,
punctate 40-221: speckle lifts as many spots as foci do), so foci are not assessed unless
``foci_from_bright_spots`` is switched on.

Choices where the lexicon gives no numbers: the echogenicity ratio compares the nodule with a ring
of tissue around it (the lexicon compares the solid part with the adjacent parenchyma, which the
ring approximates); when switched on, bright spots inside the nodule are read as punctate foci
(the most suspicious type; macrocalcifications and comet tails are not told apart). Margin is
**not assessed** from image features: no feature here separates smooth from ill-defined or
lobulated margins reliably, so its points are unknown and the point total is a lower bound.
Spongiform composition is never estimated. Every millimetre-based feature needs the spacing: with
unknown spacing, echogenicity, shape and foci are not assessed either.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from thyroid_monai import descriptor_tasks
from thyroid_monai.radiomics import RadiomicsSettings, custom_features
from thyroid_monai.tirads import (
    COMPOSITION_POINTS,
    ECHOGENICITY_POINTS,
    FOCUS_POINTS,
    MARGIN_POINTS,
    SHAPE_POINTS,
    Composition,
    EchogenicFocus,
    Echogenicity,
    Margin,
    Shape,
    acr_level,
)

NOT_ASSESSED = "not assessed"


@dataclass(frozen=True)
class DescriptorThresholds:
    """Thresholds of the image-feature rules (see the module docstring).

    Attributes:
        cystic_fraction: Anechoic share of the nodule from which it counts as cystic.
        mixed_fraction: Anechoic share from which it counts as mixed cystic and solid.
        iso_ratio: Echogenicity ratio (nodule / surrounding tissue) from which it counts as
            hyper- or isoechoic.
        very_hypo_ratio: Ratio below which it counts as very hypoechoic.
        taller_ratio: AP / transverse extent above which it is taller than wide (ACR: > 1).
        foci_from_bright_spots: Assess foci from the bright-spot count (off by default: see
            the module docstring for why).
        min_bright_spots: Bright spots from which punctate echogenic foci are reported.
    """

    cystic_fraction: float = 0.5
    mixed_fraction: float = 0.05
    iso_ratio: float = 0.85
    very_hypo_ratio: float = 0.55
    taller_ratio: float = 1.0
    foci_from_bright_spots: bool = False
    min_bright_spots: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.mixed_fraction < self.cystic_fraction <= 1:
            raise ValueError(
                "need 0 < mixed_fraction < cystic_fraction <= 1, got "
                f"{self.mixed_fraction} and {self.cystic_fraction}"
            )
        if not 0 < self.very_hypo_ratio < self.iso_ratio:
            raise ValueError(
                f"need 0 < very_hypo_ratio < iso_ratio, got {self.very_hypo_ratio} and "
                f"{self.iso_ratio}"
            )
        if self.taller_ratio <= 0 or self.min_bright_spots < 1:
            raise ValueError("taller_ratio must be positive and min_bright_spots at least 1")


@dataclass(frozen=True)
class DescriptorFinding:
    """One category: its value (``None`` when not assessed), points and what it rests on.

    Attributes:
        value: A descriptor value (a list of focus names for ``foci``), or ``None``.
        points: ACR points of the value, or ``None`` when not assessed.
        basis: What the value was read from, in a few words.
    """

    value: str | list[str] | None
    points: int | None
    basis: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready finding."""
        return {"value": self.value, "points": self.points, "basis": self.basis}


@dataclass(frozen=True)
class DescriptorAssessment:
    """The five categories, where they came from, and the points they add up to.

    Attributes:
        source: ``"descriptor_heads"`` or ``"image_features"``.
        findings: ``{category: finding}`` for composition, echogenicity, shape, margin, foci.
        features: The image features used (empty for descriptor heads).
    """

    source: str
    findings: dict[str, DescriptorFinding]
    features: dict[str, float | None]

    @property
    def complete(self) -> bool:
        """Whether every category was assessed (the point total is then exact)."""
        return all(f.points is not None for f in self.findings.values())

    @property
    def points_total(self) -> int:
        """Sum of the assessed points (a lower bound when not :attr:`complete`)."""
        return sum(f.points or 0 for f in self.findings.values())

    @property
    def level(self) -> str | None:
        """ACR level of the points, when every category was assessed."""
        if not self.complete:
            return None
        if self.findings["composition"].value == Composition.SPONGIFORM.value:
            return "TR1"  # the lexicon's rule: a spongiform nodule gets no other points
        return acr_level(self.points_total)

    @property
    def level_at_least(self) -> str:
        """The lowest level the assessed points allow (the level itself when complete)."""
        return self.level or acr_level(self.points_total)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready assessment."""
        return {
            "source": self.source,
            **{category: finding.to_dict() for category, finding in self.findings.items()},
            "points_total": self.points_total,
            "points_complete": self.complete,
            "level_from_points": self.level,
            "level_at_least": self.level_at_least,
            "features": {k: None if v is None else round(v, 4) for k, v in self.features.items()},
        }


def _composition(fraction: float | None, limits: DescriptorThresholds) -> DescriptorFinding:
    if fraction is None:
        return DescriptorFinding(None, None, NOT_ASSESSED + " (nodule too small)")
    basis = f"anechoic fraction {fraction:.2f}"
    if fraction >= limits.cystic_fraction:
        value = Composition.CYSTIC
    elif fraction >= limits.mixed_fraction:
        value = Composition.MIXED
    else:
        value = Composition.SOLID
    return DescriptorFinding(value.value, COMPOSITION_POINTS[value], basis)


def _echogenicity(
    ratio: float | None, composition: DescriptorFinding, limits: DescriptorThresholds
) -> DescriptorFinding:
    if composition.value == Composition.CYSTIC.value:
        value = Echogenicity.ANECHOIC
        return DescriptorFinding(value.value, ECHOGENICITY_POINTS[value], "cystic composition")
    if ratio is None:
        return DescriptorFinding(None, None, NOT_ASSESSED + " (needs the pixel spacing)")
    if ratio >= limits.iso_ratio:
        value = Echogenicity.HYPER_ISO
    elif ratio >= limits.very_hypo_ratio:
        value = Echogenicity.HYPO
    else:
        value = Echogenicity.VERY_HYPO
    basis = f"nodule / surrounding tissue intensity {ratio:.2f}"
    return DescriptorFinding(value.value, ECHOGENICITY_POINTS[value], basis)


def _shape(ratio: float | None, limits: DescriptorThresholds) -> DescriptorFinding:
    if ratio is None:
        return DescriptorFinding(None, None, NOT_ASSESSED + " (needs the pixel spacing)")
    value = Shape.TALLER_THAN_WIDE if ratio > limits.taller_ratio else Shape.WIDER_THAN_TALL
    return DescriptorFinding(value.value, SHAPE_POINTS[value], f"AP / transverse {ratio:.2f}")


def _foci(count: float | None, limits: DescriptorThresholds) -> DescriptorFinding:
    if not limits.foci_from_bright_spots:
        return DescriptorFinding(None, None, NOT_ASSESSED + " (bright spots are not read as foci)")
    if count is None:
        return DescriptorFinding(None, None, NOT_ASSESSED + " (needs the pixel spacing)")
    basis = f"{int(count)} bright spots inside the nodule"
    if count >= limits.min_bright_spots:
        focus = EchogenicFocus.PUNCTATE
        return DescriptorFinding([focus.value], FOCUS_POINTS[focus], basis)
    return DescriptorFinding([], 0, basis)


def estimate_descriptors(
    image: np.ndarray,
    mask: np.ndarray,
    spacing_mm: tuple[float, float] | None,
    *,
    thresholds: DescriptorThresholds | None = None,
    settings: RadiomicsSettings | None = None,
) -> DescriptorAssessment:
    """Estimates composition, echogenicity and shape (and foci if asked) from image features.

    Args:
        image: ``(rows, columns)`` 8-bit B-mode image.
        mask: ``(rows, columns)`` nodule mask.
        spacing_mm: ``(x, y)`` pixel spacing in mm, or ``None`` when unknown.
        thresholds: Rule thresholds.
        settings: Feature settings (ring width, spot size...).

    Returns:
        The assessment (``source="image_features"``).
    """
    limits = thresholds or DescriptorThresholds()
    features = custom_features(image, mask, spacing_mm, settings)
    composition = _composition(features["anechoic_fraction"], limits)
    findings = {
        "composition": composition,
        "echogenicity": _echogenicity(features["echogenicity_ratio"], composition, limits),
        "shape": _shape(features["taller_than_wide"], limits),
        "margin": DescriptorFinding(None, None, NOT_ASSESSED + " (no image feature used)"),
        "foci": _foci(features["bright_spot_count"], limits),
    }
    return DescriptorAssessment("image_features", findings, features)


def descriptors_from_heads(
    outputs: Mapping[str, np.ndarray], *, foci_threshold: float = 0.5
) -> DescriptorAssessment:
    """Reads the five categories from descriptor-head outputs of one image.

    Args:
        outputs: ``{desc_<category>: logits}`` as 1D arrays (one image).
        foci_threshold: Sigmoid probability from which a focus type counts as present.

    Returns:
        The assessment (``source="descriptor_heads"``), each finding with its probability.

    Raises:
        KeyError: If a descriptor head is missing (names the task).
    """
    findings: dict[str, DescriptorFinding] = {}
    points_of: dict[str, Mapping] = {
        "composition": COMPOSITION_POINTS,
        "echogenicity": ECHOGENICITY_POINTS,
        "shape": SHAPE_POINTS,
        "margin": MARGIN_POINTS,
    }
    enums: dict[str, type] = {
        "composition": Composition,
        "echogenicity": Echogenicity,
        "shape": Shape,
        "margin": Margin,
    }
    for category in descriptor_tasks.CATEGORICAL:
        task = descriptor_tasks.task_name(category)
        if task not in outputs:
            raise KeyError(f"the model has no {task} output")
        logits = np.asarray(outputs[task], dtype=np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        index = int(np.argmax(probabilities))
        value = enums[category](descriptor_tasks.class_names(category)[index])
        basis = f"descriptor head, probability {probabilities[index]:.2f}"
        findings[category] = DescriptorFinding(value.value, points_of[category][value], basis)
    logits = np.asarray(outputs[descriptor_tasks.FOCI_TASK], dtype=np.float64)
    present = 1.0 / (1.0 + np.exp(-logits)) >= foci_threshold
    names = [n for n, on in zip(descriptor_tasks.class_names("foci"), present, strict=True) if on]
    points = sum(FOCUS_POINTS[EchogenicFocus(name)] for name in names)
    findings["foci"] = DescriptorFinding(names, points, "descriptor head (multi-label)")
    return DescriptorAssessment("descriptor_heads", findings, {})
