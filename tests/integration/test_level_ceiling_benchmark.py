"""The level ceilings' knockout: the phantom's own nodules, levelled with categories unknown."""

import json
from collections import Counter

import pytest
from integration_helpers import load_benchmark

from thyroid_monai.synthetic.phantom import Phantom


@pytest.fixture(scope="module")
def ceiling():
    return load_benchmark("level_ceiling")


def test_drawn_descriptors_are_those_of_the_rendered_patients(ceiling):
    config = ceiling.phantom_config("none", ceiling.QUICK)
    phantom = Phantom(config)
    drawn = ceiling.phantom_nodules(config, 4)
    assert drawn == [phantom.patient(index, views=1)[0].descriptors for index in range(4)]


def test_exact_distribution_is_what_the_sampler_draws(ceiling):
    config = ceiling.phantom_config("none", ceiling.QUICK)
    distribution = ceiling.descriptor_distribution(config)
    assert sum(distribution.values()) == pytest.approx(1.0)
    nodules = ceiling.phantom_nodules(config, 4000)
    assert set(nodules) <= set(distribution)
    for category in ceiling.CATEGORIES:
        drawn = Counter(getattr(n, category) for n in nodules)
        exact = Counter[object]()
        for combo, probability in distribution.items():
            exact[getattr(combo, category)] += probability
        for value, probability in exact.items():
            assert drawn[value] / len(nodules) == pytest.approx(probability, abs=0.03), category


def test_knockout_scores_nothing_unknown_perfectly_and_nothing_above_it(ceiling, tmp_path):
    ceiling.main(["--knockout", "--draws", "3000", "--out", str(tmp_path)])
    result = json.loads((tmp_path / "level_knockout.json").read_text())
    assert result["command"].startswith("python benchmarks/level_ceiling.py --knockout")
    assert sum(result["level_counts"].values()) == 3000
    rows = {row["unknown"]: row for row in result["knockout"]}
    assert len(rows) == 1 + 5 + 10
    assert "margin+foci" in rows
    metrics = ("macro_f1", "qwk", "accuracy")
    for decision in ceiling.DECISIONS:
        assert all(rows["nothing"][decision][m] == 1.0 for m in metrics)
    for name, row in rows.items():
        for decision in ceiling.DECISIONS:
            assert all(0.0 <= row[decision][m] <= 1.0 for m in metrics), (name, decision)
        if name == "nothing":
            continue
        # the phantom's level needs every category: forgetting one always costs something
        assert row["bayes"]["accuracy"] < 1.0, name
        # the majority substitute is one rule of the known categories; Bayes is the best one
        assert row["bayes"]["accuracy"] >= row["majority"]["accuracy"], name
    # knowing less never helps the Bayes decision (two unknown against either one alone)
    for name, row in rows.items():
        if "+" in name:
            for single in name.split("+"):
                assert row["bayes"]["accuracy"] <= rows[single]["bayes"]["accuracy"], name
