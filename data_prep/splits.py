"""Patient-level, label-stratified splits: no patient is ever in two folds.

Items are grouped by patient; each patient is placed as a whole. Patients are stratified by their
most frequent label, shuffled with a seed inside each stratum, and dealt to the fold (or split)
that currently holds the fewest items of that stratum, which balances both labels and sizes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from thyroid_monai import keys


def _patients(
    items: Sequence[Mapping[str, Any]], group_key: str, stratify_key: str | None
) -> tuple[dict[str, list[int]], dict[str, str]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for index, item in enumerate(items):
        if group_key not in item:
            raise ValueError(f"item {index} has no '{group_key}' to group by")
        groups[str(item[group_key])].append(index)
    strata = {}
    for patient, members in groups.items():
        labels = [str(items[i].get(stratify_key)) for i in members] if stratify_key else [""]
        strata[patient] = Counter(labels).most_common(1)[0][0]
    return groups, strata


def assign_folds(
    items: Sequence[Mapping[str, Any]],
    *,
    folds: int = 5,
    seed: int = 0,
    group_key: str = keys.PATIENT,
    stratify_key: str | None = keys.TIRADS,
) -> list[dict[str, Any]]:
    """Copies of ``items`` with a ``"fold"`` number, whole patients per fold.

    Args:
        items: Datalist items.
        folds: Number of folds (at least 2).
        seed: Shuffle seed.
        group_key: Key naming the group that must stay together (the patient).
        stratify_key: Label to balance across folds, or ``None``.

    Returns:
        New item dictionaries in the original order, each with ``"fold"`` in ``0..folds-1``.
    """
    if folds < 2:
        raise ValueError(f"at least 2 folds are needed, got {folds}")
    groups, strata = _patients(items, group_key, stratify_key)
    if len(groups) < folds:
        raise ValueError(f"{len(groups)} patients cannot fill {folds} folds")
    rng = np.random.default_rng(seed)
    fold_of: dict[str, int] = {}
    load = np.zeros(folds)
    for stratum in sorted(set(strata.values())):
        patients = sorted(p for p, s in strata.items() if s == stratum)
        stratum_load = np.zeros(folds)
        for patient in (patients[i] for i in rng.permutation(len(patients))):
            # Fewest of this stratum first, then fewest overall, then the lowest fold number.
            fold = int(np.lexsort((np.arange(folds), load, stratum_load))[0])
            fold_of[patient] = fold
            stratum_load[fold] += len(groups[patient])
            load[fold] += len(groups[patient])
    return [{**item, "fold": fold_of[str(item[group_key])]} for item in items]


def split_holdout(
    items: Sequence[Mapping[str, Any]],
    *,
    fraction: float,
    seed: int = 0,
    group_key: str = keys.PATIENT,
    stratify_key: str | None = keys.TIRADS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splits off about ``fraction`` of the patients (stratified) as a held-out set.

    Returns:
        ``(kept, held_out)`` item lists, original order, whole patients on one side.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {fraction}")
    if fraction == 0.0:
        return [dict(item) for item in items], []
    _, strata = _patients(items, group_key, stratify_key)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for stratum in sorted(set(strata.values())):
        patients = sorted(p for p, s in strata.items() if s == stratum)
        count = round(fraction * len(patients))
        held.update(patients[i] for i in rng.permutation(len(patients))[:count])
    kept = [dict(item) for item in items if str(item[group_key]) not in held]
    out = [dict(item) for item in items if str(item[group_key]) in held]
    return kept, out
