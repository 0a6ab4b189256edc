import itertools

import pytest

from thyroid_monai import tirads as t
from thyroid_monai.tirads import (
    AcrDescriptors,
    Composition,
    EchogenicFocus,
    Echogenicity,
    Margin,
    Shape,
)

# The ACR 2017 chart, written out independently of the module's tables.
CHART = {
    "composition": {
        "cystic": 0,
        "spongiform": 0,
        "mixed": 1,
        "solid": 2,
        "undetermined": 2,
    },
    "echogenicity": {"anechoic": 0, "hyper_iso": 1, "hypo": 2, "very_hypo": 3, "undetermined": 1},
    "shape": {"wider_than_tall": 0, "taller_than_wide": 3},
    "margin": {
        "smooth": 0,
        "ill_defined": 0,
        "lobulated_irregular": 2,
        "extrathyroidal_extension": 3,
        "undetermined": 0,
    },
    "foci": {"comet_tail": 0, "macrocalcification": 1, "peripheral_rim": 2, "punctate": 3},
}
BASE = {
    "composition": "cystic",
    "echogenicity": "anechoic",
    "shape": "wider_than_tall",
    "margin": "smooth",
    "foci": [],
}


@pytest.mark.parametrize(
    ("category", "value", "points"),
    [
        (c, v, p)
        for c in ("composition", "echogenicity", "shape", "margin")
        for v, p in CHART[c].items()
    ],
)
def test_every_descriptor_scores_as_on_the_chart(category, value, points):
    descriptors = AcrDescriptors.from_dict({**BASE, category: value})
    scored = t.acr_points(descriptors, spongiform_adds_no_points=False)
    assert getattr(scored, category) == points
    assert scored.total == points


@pytest.mark.parametrize(("focus", "points"), CHART["foci"].items())
def test_every_focus_scores_as_on_the_chart(focus, points):
    descriptors = AcrDescriptors.from_dict({**BASE, "foci": [focus]})
    assert t.acr_points(descriptors).foci == points


def test_foci_points_are_summed_over_all_types_present():
    every_focus = list(CHART["foci"])
    descriptors = AcrDescriptors.from_dict({**BASE, "foci": every_focus})
    assert t.acr_points(descriptors).foci == 0 + 1 + 2 + 3


@pytest.mark.parametrize(
    ("total", "level"),
    [
        (0, "TR1"),
        (1, "TR1"),
        (2, "TR2"),
        (3, "TR3"),
        (4, "TR4"),
        (5, "TR4"),
        (6, "TR4"),
        (7, "TR5"),
        (8, "TR5"),
        (14, "TR5"),
    ],
)
def test_level_at_every_boundary_total(total, level):
    assert t.acr_level(total) == level


def test_one_point_rule_is_an_option():
    assert t.acr_level(1, one_point_level="TR2") == "TR2"
    assert t.acr_level(0, one_point_level="TR2") == "TR1"
    with pytest.raises(ValueError, match="one_point_level"):
        t.acr_level(1, one_point_level="TR3")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="negative"):
        t.acr_level(-1)


def test_spongiform_adds_no_further_points_by_default():
    spongiform = AcrDescriptors(
        Composition.SPONGIFORM,
        Echogenicity.HYPO,
        Shape.TALLER_THAN_WIDE,
        Margin.LOBULATED_IRREGULAR,
        frozenset({EchogenicFocus.PUNCTATE}),
    )
    assert t.acr_points(spongiform).total == 0
    assert t.acr_level_of(spongiform) == "TR1"
    assert t.acr_points(spongiform, spongiform_adds_no_points=False).total == 10


def test_highest_possible_total():
    worst = AcrDescriptors.from_dict(
        {
            "composition": "solid",
            "echogenicity": "very_hypo",
            "shape": "taller_than_wide",
            "margin": "extrathyroidal_extension",
            "foci": ["macrocalcification", "peripheral_rim", "punctate"],
        }
    )
    assert t.acr_points(worst).total == 2 + 3 + 3 + 3 + 6
    assert t.acr_level_of(worst) == "TR5"


def test_levels_of_all_combinations_follow_the_totals():
    for values in itertools.product(*(CHART[c] for c in ("composition", "echogenicity", "shape"))):
        d = AcrDescriptors.from_dict(
            dict(zip(("composition", "echogenicity", "shape"), values, strict=True))
            | {"margin": "smooth"}
        )
        assert t.acr_level_of(d) == t.acr_level(t.acr_points(d).total)


def test_descriptor_round_trip_and_errors_name_the_value():
    descriptors = AcrDescriptors.from_dict(
        {**BASE, "composition": " Solid ", "foci": ["punctate", "macrocalcification"]}
    )
    assert descriptors.to_dict()["foci"] == ["macrocalcification", "punctate"]
    assert AcrDescriptors.from_dict(descriptors.to_dict()) == descriptors
    with pytest.raises(t.UnknownLabelError, match="'gritty'"):
        AcrDescriptors.from_dict({**BASE, "echogenicity": "gritty"})
    with pytest.raises(t.UnknownLabelError, match="margin"):
        AcrDescriptors.from_dict({k: v for k, v in BASE.items() if k != "margin"})
    with pytest.raises(t.UnknownLabelError, match="list"):
        AcrDescriptors.from_dict({**BASE, "foci": "punctate"})


@pytest.mark.parametrize(
    ("level", "size_mm", "expected"),
    [
        ("TR1", 40.0, "none"),
        ("TR2", 40.0, "none"),
        ("TR3", 25.0, "fna"),
        ("TR3", 24.9, "follow_up"),
        ("TR3", 15.0, "follow_up"),
        ("TR3", 14.9, "none"),
        ("TR4", 15.0, "fna"),
        ("TR4", 14.9, "follow_up"),
        ("TR4", 10.0, "follow_up"),
        ("TR4", 9.9, "none"),
        ("TR5", 10.0, "fna"),
        ("TR5", 9.9, "follow_up"),
        ("TR5", 5.0, "follow_up"),
        ("TR5", 4.9, "none"),
        ("TR4", None, "size_unknown"),
        ("TR1", None, "none"),
    ],
)
def test_size_thresholds_per_level(level, size_mm, expected):
    assert t.acr_recommendation(level, size_mm) == expected


@pytest.mark.parametrize(
    ("count", "benign", "level"),
    [
        (0, True, "2"),
        (0, False, "3"),
        (1, False, "4a"),
        (2, False, "4b"),
        (3, False, "4c"),
        (4, False, "4c"),
        (5, False, "5"),
    ],
)
def test_kwak_levels(count, benign, level):
    assert t.kwak_level(count, benign=benign) == level


def test_kwak_rejects_impossible_counts():
    with pytest.raises(ValueError, match="0 to 5"):
        t.kwak_level(6)
    with pytest.raises(ValueError, match="benign"):
        t.kwak_level(1, benign=True)


def test_kwak_from_acr_descriptors():
    cyst = AcrDescriptors.from_dict(BASE)
    assert t.kwak_level_of(cyst) == "2"
    suspicious = AcrDescriptors.from_dict(
        {
            "composition": "solid",
            "echogenicity": "hypo",
            "shape": "taller_than_wide",
            "margin": "lobulated_irregular",
            "foci": ["punctate"],
        }
    )
    assert t.kwak_level_of(suspicious) == "5"
    iso_solid = AcrDescriptors.from_dict(
        {**BASE, "composition": "solid", "echogenicity": "hyper_iso"}
    )
    assert t.kwak_level_of(iso_solid) == "4a"


@pytest.mark.parametrize(
    ("name", "scheme", "mapping"),
    [
        ("acr5", "acr", {"TR1": 0, "TR2": 1, "TR3": 2, "TR4": 3, "TR5": 4}),
        ("risk3", "acr", {"TR1": 0, "TR2": 0, "TR3": 0, "TR4": 1, "TR5": 2}),
        ("binary", "acr", {"TR1": 0, "TR2": 0, "TR3": 0, "TR4": 1, "TR5": 1}),
        ("kwak6", "kwak", {"2": 0, "3": 1, "4a": 2, "4b": 3, "4c": 4, "5": 5}),
        ("binary", "kwak", {"2": 0, "3": 0, "4a": 1, "4b": 1, "4c": 1, "5": 1}),
    ],
)
def test_groupings(name, scheme, mapping):
    grouping = t.get_grouping(name, scheme)
    assert {level: grouping.index(level) for level in mapping} == mapping
    assert grouping.num_classes == len(set(mapping.values()))
    for index in range(grouping.num_classes):
        assert all(mapping[level] == index for level in grouping.levels_of(index))


@pytest.mark.parametrize(("label", "level"), [("tr 3", "TR3"), (3, "TR3"), ("TI-RADS 5", "TR5")])
def test_acr_label_spellings(label, level):
    assert t.normalise_level(label, "acr") == level


@pytest.mark.parametrize(("label", "level"), [("4A", "4a"), (" 4b ", "4b"), ("TIRADS 4c", "4c")])
def test_kwak_label_spellings(label, level):
    assert t.normalise_level(label, "kwak") == level


@pytest.mark.parametrize(
    ("label", "scheme"),
    [("TR6", "acr"), ("4a", "acr"), ("TR3", "kwak"), ("", "kwak"), (True, "acr")],
)
def test_unknown_labels_raise_naming_the_label(label, scheme):
    with pytest.raises(t.UnknownLabelError, match=repr(label).replace("(", r"\(")):
        t.get_grouping("binary", scheme).index(label)


def test_unknown_grouping_lists_the_valid_ones():
    with pytest.raises(t.UnknownLabelError, match="acr/risk3"):
        t.get_grouping("risk4")
