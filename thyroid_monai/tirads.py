"""ACR TI-RADS 2017 and the Kwak-style TI-RADS used by DDTI, with explicit label groupings.

ACR TI-RADS (Tessler et al., J Am Coll Radiol 2017;14:587-595) scores five ultrasound descriptor
categories, sums the points and maps the total to a level TR1..TR5; the level and the nodule's
maximum diameter decide between fine-needle aspiration (FNA), ultrasound follow-up or nothing.

Two rules that the chart leaves to the reader are explicit options here:

* **A total of 1 point.** The chart lists TR1 as 0 points and TR2 as 2 points; 1 is not listed.
  We map it to TR1 by default (``one_point_level="TR1"``). A 1-point total arises only from an
  otherwise benign nodule with a single minor finding (for example a cystic nodule with a
  macrocalcification), and TR1 and TR2 carry the same management (no FNA, no follow-up), so the
  choice changes the label and never the recommendation. Pass ``one_point_level="TR2"`` to follow
  the other common reading.
* **Spongiform nodules.** The ACR lexicon says not to add points from other categories to a
  spongiform nodule, so its total is 0 (``spongiform_adds_no_points=True``, the default).

The Kwak scheme (Kwak et al., Radiology 2011;260:892-899) counts five suspicious features (solid
component, hypoechogenicity, microlobulated or irregular margins, microcalcifications,
taller-than-wide shape): none gives category 3, one 4a, two 4b, three or four 4c, all five 5;
category 2 is a benign pattern. DDTI labels use this scheme, so its levels stay in their own
label space and are never silently mixed with ACR levels.

This module imports nothing heavy and is used by data preparation, training and the report alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, TypeVar


class UnknownLabelError(ValueError):
    """A TI-RADS level, grouping or descriptor value that the scheme does not define."""


class Composition(StrEnum):
    """ACR composition: choose one."""

    CYSTIC = "cystic"
    """Cystic or almost completely cystic."""
    SPONGIFORM = "spongiform"
    """Predominantly (>50%) small cystic spaces."""
    MIXED = "mixed"
    """Mixed cystic and solid."""
    SOLID = "solid"
    """Solid or almost completely solid."""
    UNDETERMINED = "undetermined"
    """Cannot be determined because of calcification (scored as solid)."""


class Echogenicity(StrEnum):
    """ACR echogenicity of the solid part relative to the thyroid parenchyma: choose one."""

    ANECHOIC = "anechoic"
    HYPER_ISO = "hyper_iso"
    HYPO = "hypo"
    VERY_HYPO = "very_hypo"
    """Darker than the strap muscles."""
    UNDETERMINED = "undetermined"


class Shape(StrEnum):
    """ACR shape on a transverse view: choose one."""

    WIDER_THAN_TALL = "wider_than_tall"
    TALLER_THAN_WIDE = "taller_than_wide"
    """Anteroposterior extent greater than transverse extent."""


class Margin(StrEnum):
    """ACR margin: choose one."""

    SMOOTH = "smooth"
    ILL_DEFINED = "ill_defined"
    LOBULATED_IRREGULAR = "lobulated_irregular"
    EXTRATHYROIDAL_EXTENSION = "extrathyroidal_extension"
    UNDETERMINED = "undetermined"


class EchogenicFocus(StrEnum):
    """ACR echogenic foci: choose all that apply (an empty set means none)."""

    COMET_TAIL = "comet_tail"
    """Large comet-tail artefact, 0 points."""
    MACROCALCIFICATION = "macrocalcification"
    PERIPHERAL_RIM = "peripheral_rim"
    PUNCTATE = "punctate"


COMPOSITION_POINTS: Mapping[Composition, int] = {
    Composition.CYSTIC: 0,
    Composition.SPONGIFORM: 0,
    Composition.MIXED: 1,
    Composition.SOLID: 2,
    Composition.UNDETERMINED: 2,
}
ECHOGENICITY_POINTS: Mapping[Echogenicity, int] = {
    Echogenicity.ANECHOIC: 0,
    Echogenicity.HYPER_ISO: 1,
    Echogenicity.HYPO: 2,
    Echogenicity.VERY_HYPO: 3,
    Echogenicity.UNDETERMINED: 1,
}
SHAPE_POINTS: Mapping[Shape, int] = {Shape.WIDER_THAN_TALL: 0, Shape.TALLER_THAN_WIDE: 3}
MARGIN_POINTS: Mapping[Margin, int] = {
    Margin.SMOOTH: 0,
    Margin.ILL_DEFINED: 0,
    Margin.LOBULATED_IRREGULAR: 2,
    Margin.EXTRATHYROIDAL_EXTENSION: 3,
    Margin.UNDETERMINED: 0,
}
FOCUS_POINTS: Mapping[EchogenicFocus, int] = {
    EchogenicFocus.COMET_TAIL: 0,
    EchogenicFocus.MACROCALCIFICATION: 1,
    EchogenicFocus.PERIPHERAL_RIM: 2,
    EchogenicFocus.PUNCTATE: 3,
}

ACR_LEVELS: tuple[str, ...] = ("TR1", "TR2", "TR3", "TR4", "TR5")
KWAK_LEVELS: tuple[str, ...] = ("2", "3", "4a", "4b", "4c", "5")
Scheme = Literal["acr", "kwak"]


_E = TypeVar("_E", bound=StrEnum)


def _parse_enum(enum: type[_E], value: object, category: str) -> _E:
    try:
        return enum(str(value).strip().lower())
    except ValueError:
        valid = ", ".join(member.value for member in enum)
        raise UnknownLabelError(
            f"unknown {category} value {value!r}; expected one of: {valid}"
        ) from None


@dataclass(frozen=True)
class AcrDescriptors:
    """One nodule's ACR descriptors, one value per category and a set of echogenic foci.

    Attributes:
        composition: Composition category.
        echogenicity: Echogenicity of the solid component.
        shape: Taller-than-wide or not.
        margin: Margin category.
        foci: Every echogenic-focus type present (empty for none).
    """

    composition: Composition
    echogenicity: Echogenicity
    shape: Shape
    margin: Margin
    foci: frozenset[EchogenicFocus] = field(default_factory=frozenset)

    def to_dict(self) -> dict[str, str | list[str]]:
        """Returns a JSON-ready dictionary (foci sorted by their points, then by name)."""
        return {
            "composition": self.composition.value,
            "echogenicity": self.echogenicity.value,
            "shape": self.shape.value,
            "margin": self.margin.value,
            "foci": [f.value for f in sorted(self.foci, key=lambda f: (FOCUS_POINTS[f], f.value))],
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> AcrDescriptors:
        """Builds descriptors from a dictionary as written by :meth:`to_dict`.

        Args:
            values: Mapping with the keys ``composition``, ``echogenicity``, ``shape``, ``margin``
                and optionally ``foci`` (a list of focus names; missing or empty means none).

        Returns:
            The validated descriptors.

        Raises:
            UnknownLabelError: If a key is missing or a value is not an ACR descriptor value.
        """
        missing = [k for k in ("composition", "echogenicity", "shape", "margin") if k not in values]
        if missing:
            raise UnknownLabelError(f"ACR descriptors lack the categories {missing}")
        raw_foci = values.get("foci") or []
        if isinstance(raw_foci, str) or not isinstance(raw_foci, Iterable):
            raise UnknownLabelError(f"'foci' must be a list of focus names, got {raw_foci!r}")
        return cls(
            composition=_parse_enum(Composition, values["composition"], "composition"),
            echogenicity=_parse_enum(Echogenicity, values["echogenicity"], "echogenicity"),
            shape=_parse_enum(Shape, values["shape"], "shape"),
            margin=_parse_enum(Margin, values["margin"], "margin"),
            foci=frozenset(_parse_enum(EchogenicFocus, f, "echogenic focus") for f in raw_foci),
        )


@dataclass(frozen=True)
class AcrPoints:
    """Points per ACR category and their total."""

    composition: int
    echogenicity: int
    shape: int
    margin: int
    foci: int

    @property
    def total(self) -> int:
        """Sum of the five category points."""
        return self.composition + self.echogenicity + self.shape + self.margin + self.foci


def acr_points(descriptors: AcrDescriptors, *, spongiform_adds_no_points: bool = True) -> AcrPoints:
    """Scores descriptors with the ACR TI-RADS 2017 chart.

    Args:
        descriptors: The nodule's descriptors.
        spongiform_adds_no_points: Follow the lexicon's rule that a spongiform nodule receives no
            points from the other categories (its total is then 0).

    Returns:
        The points of each category; echogenic foci points are summed over all foci present.
    """
    if spongiform_adds_no_points and descriptors.composition is Composition.SPONGIFORM:
        return AcrPoints(0, 0, 0, 0, 0)
    return AcrPoints(
        composition=COMPOSITION_POINTS[descriptors.composition],
        echogenicity=ECHOGENICITY_POINTS[descriptors.echogenicity],
        shape=SHAPE_POINTS[descriptors.shape],
        margin=MARGIN_POINTS[descriptors.margin],
        foci=sum(FOCUS_POINTS[f] for f in descriptors.foci),
    )


def acr_level(total_points: int, *, one_point_level: Literal["TR1", "TR2"] = "TR1") -> str:
    """Maps an ACR point total to its level.

    TR1: 0 points; TR2: 2; TR3: 3; TR4: 4 to 6; TR5: 7 or more. A total of 1 is not on the chart
    and maps to ``one_point_level`` (see the module docstring for why TR1 is the default).

    Args:
        total_points: Sum of the five category points.
        one_point_level: Level assigned to a total of exactly 1.

    Returns:
        ``"TR1"`` to ``"TR5"``.

    Raises:
        ValueError: If the total is negative or ``one_point_level`` is not TR1 or TR2.
    """
    if total_points < 0:
        raise ValueError(f"an ACR point total cannot be negative, got {total_points}")
    if one_point_level not in ("TR1", "TR2"):
        raise ValueError(f"one_point_level must be 'TR1' or 'TR2', got {one_point_level!r}")
    if total_points == 0:
        return "TR1"
    if total_points == 1:
        return one_point_level
    if total_points == 2:
        return "TR2"
    if total_points == 3:
        return "TR3"
    if total_points <= 6:
        return "TR4"
    return "TR5"


def acr_level_of(
    descriptors: AcrDescriptors,
    *,
    one_point_level: Literal["TR1", "TR2"] = "TR1",
    spongiform_adds_no_points: bool = True,
) -> str:
    """Returns the ACR level of a nodule's descriptors (points, then level)."""
    points = acr_points(descriptors, spongiform_adds_no_points=spongiform_adds_no_points)
    return acr_level(points.total, one_point_level=one_point_level)


class Recommendation(StrEnum):
    """ACR management recommendation for one nodule."""

    FNA = "fna"
    FOLLOW_UP = "follow_up"
    NONE = "none"
    SIZE_UNKNOWN = "size_unknown"
    """The level calls for a size-based decision but the nodule size is unknown."""


@dataclass(frozen=True)
class SizeThresholds:
    """Maximum-diameter thresholds in millimetres for one ACR level (``None``: never)."""

    fna_mm: float | None
    follow_up_mm: float | None
    follow_up_years: tuple[int, ...] = ()
    """Suggested follow-up imaging times after the first exam, in years."""


ACR_SIZE_THRESHOLDS: Mapping[str, SizeThresholds] = {
    "TR1": SizeThresholds(None, None),
    "TR2": SizeThresholds(None, None),
    "TR3": SizeThresholds(fna_mm=25.0, follow_up_mm=15.0, follow_up_years=(1, 3, 5)),
    "TR4": SizeThresholds(fna_mm=15.0, follow_up_mm=10.0, follow_up_years=(1, 2, 3, 5)),
    "TR5": SizeThresholds(fna_mm=10.0, follow_up_mm=5.0, follow_up_years=(1, 2, 3, 4, 5)),
}


def acr_recommendation(level: str, max_diameter_mm: float | None) -> Recommendation:
    """ACR recommendation from level and maximum diameter.

    Args:
        level: ``"TR1"`` to ``"TR5"``.
        max_diameter_mm: Largest nodule diameter in millimetres, or ``None`` when the pixel spacing
            (and so the size) is unknown.

    Returns:
        FNA at or above the level's FNA threshold, follow-up at or above its follow-up threshold,
        otherwise none; ``SIZE_UNKNOWN`` when a TR3-TR5 nodule has no known size.
    """
    thresholds = ACR_SIZE_THRESHOLDS[normalise_level(level, "acr")]
    if thresholds.fna_mm is None or thresholds.follow_up_mm is None:
        return Recommendation.NONE
    if max_diameter_mm is None:
        return Recommendation.SIZE_UNKNOWN
    if max_diameter_mm >= thresholds.fna_mm:
        return Recommendation.FNA
    if max_diameter_mm >= thresholds.follow_up_mm:
        return Recommendation.FOLLOW_UP
    return Recommendation.NONE


class KwakFeature(StrEnum):
    """The five suspicious features counted by the Kwak scheme."""

    SOLID_COMPONENT = "solid_component"
    HYPOECHOGENICITY = "hypoechogenicity"
    MICROLOBULATED_IRREGULAR_MARGIN = "microlobulated_irregular_margin"
    MICROCALCIFICATIONS = "microcalcifications"
    TALLER_THAN_WIDE = "taller_than_wide"


def kwak_level(n_suspicious: int, *, benign: bool = False) -> str:
    """Kwak category from the number of suspicious features.

    Args:
        n_suspicious: How many of the five suspicious features are present (0 to 5).
        benign: The nodule has a benign pattern (for example a simple cyst); category 2.

    Returns:
        ``"2"``, ``"3"``, ``"4a"``, ``"4b"``, ``"4c"`` or ``"5"``.

    Raises:
        ValueError: If the count is outside 0..5, or a benign pattern has suspicious features.
    """
    if not 0 <= n_suspicious <= 5:
        raise ValueError(f"the Kwak scheme counts 0 to 5 suspicious features, got {n_suspicious}")
    if benign:
        if n_suspicious:
            raise ValueError("a benign pattern cannot have suspicious features")
        return "2"
    return {0: "3", 1: "4a", 2: "4b", 3: "4c", 4: "4c", 5: "5"}[n_suspicious]


def kwak_features(descriptors: AcrDescriptors) -> frozenset[KwakFeature]:
    """Translates ACR descriptors into the Kwak suspicious features they imply."""
    features = set()
    if descriptors.composition in (Composition.SOLID, Composition.UNDETERMINED):
        features.add(KwakFeature.SOLID_COMPONENT)
    if descriptors.echogenicity in (Echogenicity.HYPO, Echogenicity.VERY_HYPO):
        features.add(KwakFeature.HYPOECHOGENICITY)
    if descriptors.margin in (Margin.LOBULATED_IRREGULAR, Margin.EXTRATHYROIDAL_EXTENSION):
        features.add(KwakFeature.MICROLOBULATED_IRREGULAR_MARGIN)
    if EchogenicFocus.PUNCTATE in descriptors.foci:
        features.add(KwakFeature.MICROCALCIFICATIONS)
    if descriptors.shape is Shape.TALLER_THAN_WIDE:
        features.add(KwakFeature.TALLER_THAN_WIDE)
    return frozenset(features)


def kwak_level_of(descriptors: AcrDescriptors) -> str:
    """Kwak category of ACR descriptors; cystic and spongiform nodules without features are 2."""
    features = kwak_features(descriptors)
    benign = not features and descriptors.composition in (
        Composition.CYSTIC,
        Composition.SPONGIFORM,
    )
    return kwak_level(len(features), benign=benign)


_ACR_PATTERN = re.compile(r"^(?:acr[\s_-]*)?(?:ti[\s_-]*rads[\s_-]*)?(?:tr)?[\s_-]*([1-5])$")
_KWAK_PATTERN = re.compile(r"^(?:k[\s_-]*)?(?:ti[\s_-]*rads[\s_-]*)?[\s_-]*(2|3|4a|4b|4c|5)$")


def normalise_level(label: object, scheme: Scheme) -> str:
    """Returns the canonical level name of a label written in one of the usual ways.

    ACR accepts ``"TR3"``, ``"tr 3"``, ``"TI-RADS 3"`` or ``3``; Kwak accepts ``"4A"``,
    ``" 4b "`` or ``"TIRADS 4c"``.

    Args:
        label: The label as found in a dataset.
        scheme: ``"acr"`` or ``"kwak"``.

    Returns:
        A member of :data:`ACR_LEVELS` or :data:`KWAK_LEVELS`.

    Raises:
        UnknownLabelError: If the label is not a level of the scheme (the message names it).
    """
    if scheme not in ("acr", "kwak"):
        raise UnknownLabelError(f"unknown TI-RADS scheme {scheme!r}; expected 'acr' or 'kwak'")
    text = str(label).strip().lower()
    pattern = _ACR_PATTERN if scheme == "acr" else _KWAK_PATTERN
    match = pattern.match(text) if not isinstance(label, bool) else None
    if match is None:
        valid = ", ".join(ACR_LEVELS if scheme == "acr" else KWAK_LEVELS)
        raise UnknownLabelError(
            f"unknown {scheme} TI-RADS label {label!r}; expected one of: {valid}"
        )
    return f"TR{match.group(1)}" if scheme == "acr" else match.group(1)


@dataclass(frozen=True)
class LabelGrouping:
    """A named mapping from the levels of one scheme to training class indices.

    Attributes:
        name: Grouping name (``"acr5"``, ``"risk3"``, ``"binary"``, ``"kwak6"``).
        scheme: Scheme whose levels it groups.
        class_names: Human-readable name of each class index.
        members: Level name to class index.
    """

    name: str
    scheme: Scheme
    class_names: tuple[str, ...]
    members: Mapping[str, int]

    @property
    def num_classes(self) -> int:
        """Number of training classes."""
        return len(self.class_names)

    def index(self, label: object) -> int:
        """Class index of a level label (normalised first).

        Raises:
            UnknownLabelError: If the label is not a level of this grouping's scheme.
        """
        return self.members[normalise_level(label, self.scheme)]

    def levels_of(self, class_index: int) -> tuple[str, ...]:
        """The levels that a class index stands for."""
        if not 0 <= class_index < self.num_classes:
            raise ValueError(f"class index {class_index} outside 0..{self.num_classes - 1}")
        return tuple(level for level, i in self.members.items() if i == class_index)


def _grouping(name: str, scheme: Scheme, classes: dict[str, tuple[str, ...]]) -> LabelGrouping:
    members = {level: i for i, levels in enumerate(classes.values()) for level in levels}
    return LabelGrouping(name, scheme, tuple(classes), members)


GROUPINGS: Mapping[tuple[Scheme, str], LabelGrouping] = {
    ("acr", "acr5"): _grouping("acr5", "acr", {level: (level,) for level in ACR_LEVELS}),
    ("acr", "risk3"): _grouping(
        "risk3", "acr", {"TR1-3": ("TR1", "TR2", "TR3"), "TR4": ("TR4",), "TR5": ("TR5",)}
    ),
    ("acr", "binary"): _grouping(
        "binary", "acr", {"TR1-3": ("TR1", "TR2", "TR3"), "TR4-5": ("TR4", "TR5")}
    ),
    ("kwak", "kwak6"): _grouping("kwak6", "kwak", {level: (level,) for level in KWAK_LEVELS}),
    ("kwak", "binary"): _grouping(
        "binary", "kwak", {"2-3": ("2", "3"), "4a-5": ("4a", "4b", "4c", "5")}
    ),
}


def get_grouping(name: str, scheme: Scheme = "acr") -> LabelGrouping:
    """Looks up a label grouping by scheme and name.

    Args:
        name: ``"acr5"``, ``"risk3"`` or ``"binary"`` for ACR; ``"kwak6"`` or ``"binary"`` for Kwak.
        scheme: ``"acr"`` (default) or ``"kwak"``.

    Returns:
        The grouping.

    Raises:
        UnknownLabelError: If no such grouping exists (the message lists the valid ones).
    """
    try:
        return GROUPINGS[(scheme, name)]
    except KeyError:
        valid = ", ".join(f"{s}/{n}" for s, n in GROUPINGS)
        raise UnknownLabelError(
            f"unknown label grouping {scheme}/{name}; expected one of: {valid}"
        ) from None
