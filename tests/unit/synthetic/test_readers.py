"""Simulated readers disagree at the configured rates; the phantom is reproducible."""

import numpy as np
import pytest

from thyroid_monai.synthetic import Phantom, PhantomConfig, consensus_mask, majority_level
from thyroid_monai.synthetic.readers import (
    ReaderStyle,
    reader_descriptors,
    reader_level,
    reader_mask,
    sample_reader_styles,
)
from thyroid_monai.synthetic.render import render_image
from thyroid_monai.tirads import AcrDescriptors, EchogenicFocus, Margin, acr_level_of

TRIALS = 4000
SOLID_PUNCTATE = AcrDescriptors.from_dict(
    {
        "composition": "solid",
        "echogenicity": "hypo",
        "shape": "wider_than_tall",
        "margin": "smooth",
        "foci": ["punctate"],
    }
)


def rate(events):
    return float(np.mean(events))


def tolerance(p):
    return 4 * np.sqrt(p * (1 - p) / TRIALS)  # four binomial standard errors


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_adjacent_level_rate(p):
    style = ReaderStyle("r", exact=False, p_adjacent=p)
    rng = np.random.default_rng(0)
    truth = acr_level_of(SOLID_PUNCTATE)
    levels = [reader_level(rng, style, SOLID_PUNCTATE) for _ in range(TRIALS)]
    assert abs(rate([level != truth for level in levels]) - p) < tolerance(p)
    assert set(levels) <= {"TR4", "TR5"}  # only adjacent levels (TR5 is at the top)


@pytest.mark.parametrize("p", [0.15, 0.4])
def test_missed_punctate_and_overcalled_margin_rates(p):
    style = ReaderStyle("r", exact=False, p_miss_punctate=p, p_overcall_margin=p)
    rng = np.random.default_rng(1)
    reported = [reader_descriptors(rng, style, SOLID_PUNCTATE) for _ in range(TRIALS)]
    missed = [EchogenicFocus.PUNCTATE not in d.foci for d in reported]
    overcalled = [d.margin is Margin.LOBULATED_IRREGULAR for d in reported]
    assert abs(rate(missed) - p) < tolerance(p)
    assert abs(rate(overcalled) - p) < tolerance(p)


def test_no_variability_means_every_reader_reports_the_truth():
    phantom = Phantom(PhantomConfig(seed=2, variability="none", readers=4))
    for case in phantom.cases(6):
        for annotation in case.annotations:
            assert np.array_equal(annotation.mask, case.mask)
            assert annotation.level == case.level
            assert annotation.descriptors == case.descriptors
        assert np.array_equal(case.consensus, case.mask)
        assert case.majority == case.level


def dice(a, b):
    return 2 * (a & b).sum() / (a.sum() + b.sum())


def disagreement(variability):
    phantom = Phantom(PhantomConfig(seed=3, variability=variability, readers=3))
    levels, dices = [], []
    for case in phantom.cases(40):
        levels += [a.level != case.level for a in case.annotations]
        dices += [dice(a.mask, case.mask) for a in case.annotations]
    return rate(levels), float(np.mean(dices))


def test_disagreement_grows_from_moderate_to_strong():
    moderate_levels, moderate_dice = disagreement("moderate")
    strong_levels, strong_dice = disagreement("strong")
    assert 0.05 < moderate_levels < strong_levels < 0.6
    assert 0.8 < strong_dice < moderate_dice < 0.99


def test_systematic_dilation_and_erosion():
    rendered = render_image(np.random.default_rng(4), SOLID_PUNCTATE)
    args = (rendered.geometry, rendered.spacing_mm, rendered.mask.shape)
    grow = ReaderStyle("grow", exact=False, dilation_mm=1.0, vertices=40)
    shrink = ReaderStyle("shrink", exact=False, dilation_mm=-1.0, vertices=40)
    grown = reader_mask(np.random.default_rng(0), grow, *args)
    shrunk = reader_mask(np.random.default_rng(0), shrink, *args)
    assert shrunk.sum() < rendered.mask.sum() < grown.sum()
    assert (shrunk & ~rendered.mask).sum() < 0.02 * shrunk.sum()


def test_consensus_and_majority():
    a = np.array([1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 1, 0], dtype=bool)
    c = np.array([1, 0, 0, 0], dtype=bool)
    assert consensus_mask([a, b, c]).tolist() == [True, False, False, False]
    assert consensus_mask([a, b]).tolist() == [True, True, True, False]  # half counts
    assert majority_level(["TR3", "TR4", "TR3"]) == "TR3"
    assert majority_level(["TR3", "TR4"]) == "TR4"  # ties go to the more suspicious level


def test_reader_styles_are_validated():
    with pytest.raises(ValueError, match="variability"):
        sample_reader_styles(np.random.default_rng(0), 3, "wild")
    with pytest.raises(ValueError, match="reader"):
        sample_reader_styles(np.random.default_rng(0), 0, "moderate")


def test_patients_do_not_depend_on_how_many_are_generated():
    phantom = Phantom(PhantomConfig(seed=5))
    few = list(phantom.cases(4))
    many = list(Phantom(PhantomConfig(seed=5)).cases(10))
    for a, b in zip(few, many, strict=False):
        assert a.case_id == b.case_id
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.consensus, b.consensus)


def test_views_of_a_patient_share_the_nodule():
    views = Phantom(PhantomConfig(seed=6, images_per_patient=3)).patient(0)
    assert len({v.level for v in views}) == 1
    assert len({v.descriptors for v in views}) == 1
    assert not np.array_equal(views[0].image, views[1].image)
    assert len({v.frame.text.patient_id for v in views}) == 1


def test_class_mix_is_honoured():
    phantom = Phantom(PhantomConfig(seed=7, images_per_patient=1, class_mix={"TR2": 1, "TR5": 3}))
    levels = [phantom.patient(i)[0].level for i in range(200)]
    assert set(levels) == {"TR2", "TR5"}
    assert 0.65 < levels.count("TR5") / len(levels) < 0.85
    with pytest.raises(ValueError, match="TR7"):
        PhantomConfig(class_mix={"TR7": 1})


def test_frame_holds_the_tissue_and_burned_in_text_outside_it():
    case = next(Phantom(PhantomConfig(seed=8)).cases(1))
    x0, y0, x1, y1 = case.frame.region
    frame = case.frame.image
    assert np.array_equal(frame[y0 : y1 + 1, x0 : x1 + 1], case.image)
    outside = frame.copy()
    outside[y0 : y1 + 1, x0 : x1 + 1] = 0
    assert (outside[:y0] > 150).sum() > 200  # the text lines above the image
    assert (outside[y0 : y1 + 1, x1 + 1 :] > 150).sum() > 50  # the depth ruler
