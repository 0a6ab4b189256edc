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
