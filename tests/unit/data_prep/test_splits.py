from collections import Counter

import pytest

from data_prep.splits import assign_folds, split_holdout


def items(patients=40, views=3):
    levels = ["TR1", "TR2", "TR3", "TR4", "TR5"]
    return [
        {"image": f"{p}_{v}", "patient": f"P{p}", "tirads": levels[p % 5]}
        for p in range(patients)
        for v in range(1 + p % views)
    ]


def test_no_patient_in_two_folds_and_labels_balanced():
    folded = assign_folds(items(), folds=5, seed=0)
    fold_of = {}
    for item in folded:
        assert fold_of.setdefault(item["patient"], item["fold"]) == item["fold"]
    per_fold = Counter(item["fold"] for item in folded)
    assert set(per_fold) == set(range(5))
    assert max(per_fold.values()) - min(per_fold.values()) <= 3
    for level in ("TR1", "TR5"):
        counts = Counter(i["fold"] for i in folded if i["tirads"] == level)
        assert set(counts) == set(range(5))


def test_folds_are_deterministic_and_seeded():
    assert assign_folds(items(), seed=1) == assign_folds(items(), seed=1)
    assert assign_folds(items(), seed=1) != assign_folds(items(), seed=2)


def test_holdout_keeps_patients_whole():
    kept, held = split_holdout(items(), fraction=0.2, seed=0)
    assert {i["patient"] for i in kept}.isdisjoint({i["patient"] for i in held})
    assert 6 <= len({i["patient"] for i in held}) <= 10
    assert len(kept) + len(held) == len(items())


def test_errors_are_clear():
    with pytest.raises(ValueError, match="patients cannot fill"):
        assign_folds(items(patients=3), folds=5)
    with pytest.raises(ValueError, match="'patient'"):
        assign_folds([{"image": "a"}], folds=2)
    with pytest.raises(ValueError, match="fraction"):
        split_holdout(items(), fraction=1.5)


def test_duplicates_join_patients_and_fixed_test_takes_whole_groups():
    from data_prep.splits import duplicate_groups, split_dataset

    items = [{"patient": f"p{i}", "case_id": f"c{i}", "tirads": "TR3"} for i in range(12)]
    digests = [f"d{i}" for i in range(12)]
    digests[5] = digests[1]  # p1 and p5 share an image
    digests[9] = digests[5]  # ... and p9 through p5
    groups = duplicate_groups(items, digests)
    assert groups[1] == groups[5] == groups[9] != groups[2]
    training, testing = split_dataset(items, digests=digests, folds=3, test_fraction=0.0)
    fold = {i["patient"]: i["fold"] for i in training}
    assert fold["p1"] == fold["p5"] == fold["p9"]
    training, testing = split_dataset(items, digests=digests, folds=3, fixed_test={"c9"})
    assert sorted(i["case_id"] for i in testing) == ["c1", "c5", "c9"]
    assert all("fold" not in i for i in testing)


def test_small_strata_still_hold_out_the_requested_share_of_patients():
    # Ten patients spread over six levels: rounding per level would hold out nobody at 25 %.
    levels = ["2", "2", "3", "4a", "4b", "4b", "4c", "5", "5", "3"]
    records = [
        {"patient": f"p{i}", "tirads": level, "image": f"{i}.nii.gz"}
        for i, level in enumerate(levels)
    ]
    kept, held = split_holdout(records, fraction=0.25, seed=0)
    assert len(held) == round(0.25 * len(records))
    assert {r["patient"] for r in kept}.isdisjoint({r["patient"] for r in held})
    assert split_holdout(records, fraction=0.25, seed=0) == (kept, held)  # reproducible
    assert len(split_holdout(records[:2], fraction=0.1, seed=0)[1]) == 1  # at least one
