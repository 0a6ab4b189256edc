"""Patient-level, label-stratified splits: no patient is ever in two folds.

Items are grouped by patient; each patient is placed as a whole. Patients are stratified by their
most frequent label, shuffled with a seed inside each stratum, and dealt to the fold (or split)
that currently holds the fewest items of that stratum, which balances both labels and sizes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
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


def held_out_total(patients: int, fraction: float) -> int:
    """Patients :func:`split_holdout` holds out.

    ``round(fraction * patients)``, at least one when there are two patients or more, none when
    ``fraction`` is 0.
    """
    if fraction == 0.0:
        return 0
    total = round(fraction * patients)
    return 1 if total == 0 and patients > 1 else total


def check_fold_capacity(patients: int, folds: int, test_fraction: float) -> None:
    """Checks, before anything is made, that ``patients`` can fill the split.

    Raises:
        ValueError: If fewer than ``folds`` patients remain for training after the held-out
            share (the message says how many there are and how many are needed).
    """
    if folds < 2:
        raise ValueError(f"at least 2 folds are needed, got {folds}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"the held-out fraction must be in [0, 1), got {test_fraction}")
    training = patients - held_out_total(patients, test_fraction)
    if training < folds:
        raise ValueError(
            f"{patients} patients leave {training} for training after the held-out share, "
            f"which cannot fill {folds} folds"
        )


def _stratum_quotas(
    by_stratum: Mapping[Any, Sequence[str]], fraction: float, rng: np.random.Generator
) -> dict[Any, int]:
    """Held-out patients per stratum, shared by largest remainder.

    ``round(fraction * patients)`` in total, at least one when there are two patients or more.

    Rounding each stratum on its own would hold out nobody when every stratum is small (ten
    patients in six TI-RADS levels at 20 %); the total is what the user asked for.
    """
    patients = sum(len(members) for members in by_stratum.values())
    total = held_out_total(patients, fraction)
    exact = {stratum: fraction * len(members) for stratum, members in by_stratum.items()}
    quotas = {stratum: int(np.floor(share)) for stratum, share in exact.items()}
    # Remaining places go to the largest remainders; random ties, reproducible from the seed.
    order = sorted(exact, key=lambda s: (-(exact[s] - quotas[s]), rng.random()))
    for stratum in order[: max(total - sum(quotas.values()), 0)]:
        quotas[stratum] += 1
    return quotas


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
    by_stratum = {
        stratum: sorted(p for p, s in strata.items() if s == stratum)
        for stratum in sorted(set(strata.values()))
    }
    held: set[str] = set()
    for stratum, count in _stratum_quotas(by_stratum, fraction, rng).items():
        patients = by_stratum[stratum]
        held.update(patients[i] for i in rng.permutation(len(patients))[:count])
    kept = [dict(item) for item in items if str(item[group_key]) not in held]
    out = [dict(item) for item in items if str(item[group_key]) in held]
    return kept, out


def duplicate_groups(
    items: Sequence[Mapping[str, Any]], digests: Sequence[str], group_key: str = keys.PATIENT
) -> list[str]:
    """One group name per item: patients joined whenever they share a byte-identical image.

    Public datasets hold the same image under different cases (DDTI does); putting those cases in
    different folds would leak the image. Patients linked by identical images, directly or
    through a chain, form one group, named after its first patient in sorted order.
    """
    if len(items) != len(digests):
        raise ValueError(f"{len(items)} items but {len(digests)} image digests")
    parent: dict[str, str] = {}

    def find(name: str) -> str:
        while parent.setdefault(name, name) != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    first_owner: dict[str, str] = {}
    for index, (item, digest) in enumerate(zip(items, digests, strict=True)):
        if group_key not in item:
            raise ValueError(f"item {index} has no '{group_key}' to group by")
        patient = str(item[group_key])
        find(patient)
        owner = first_owner.setdefault(digest, patient)
        a, b = find(owner), find(patient)
        if a != b:
            parent[max(a, b)] = min(a, b)
    return [find(str(item[group_key])) for item in items]


def split_dataset(
    items: Sequence[Mapping[str, Any]],
    *,
    digests: Sequence[str],
    folds: int = 5,
    test_fraction: float = 0.2,
    seed: int = 0,
    fixed_test: Iterable[str] = (),
    keep_folds: bool = False,
    stratify_key: str | None = keys.TIRADS,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Held-out set and patient-level folds, with duplicate images kept in one group.

    Args:
        items: Datalist items (with ``patient`` and ``case_id``).
        digests: One image digest per item (:func:`data_prep.convert.pixel_sha256`).
        folds: Cross-validation folds of the training items.
        test_fraction: Share of groups held out when ``fixed_test`` is empty.
        seed: Shuffle seed.
        fixed_test: Case IDs that must be held out (a dataset's official test split); the
            whole group of each (same patient or a duplicate image) goes with it, and no
            random held-out set is drawn.
        keep_folds: Keep the ``fold`` each item already has (a dataset's own folds); the
            groups are checked instead of assigned.
        stratify_key: Label balanced across folds and the held-out set.

    Returns:
        ``(training, testing)``: training items with ``fold``, testing items without.

    Raises:
        ValueError: If kept folds put one group in two folds, or a fixed test case is unknown.
    """
    groups = duplicate_groups(items, digests)
    tagged = [{**item, _GROUP: group} for item, group in zip(items, groups, strict=True)]
    wanted = set(fixed_test)
    if wanted:
        known = {str(item.get(keys.CASE_ID)) for item in items}
        unknown = sorted(wanted - known)
        if unknown:
            raise ValueError(
                f"fixed test cases not found among the converted images: {unknown[:5]}"
            )
        held = {t[_GROUP] for t in tagged if str(t.get(keys.CASE_ID)) in wanted}
        kept = [t for t in tagged if t[_GROUP] not in held]
        testing = [t for t in tagged if t[_GROUP] in held]
    else:
        kept, testing = split_holdout(
            tagged, fraction=test_fraction, seed=seed, group_key=_GROUP, stratify_key=stratify_key
        )
    if keep_folds:
        fold_of: dict[str, set[int]] = defaultdict(set)
        for item in kept:
            if keys.FOLD not in item:
                raise ValueError(f"item {item.get(keys.CASE_ID)} has no dataset fold to keep")
            fold_of[item[_GROUP]].add(int(item[keys.FOLD]))
        split_groups = sorted(g for g, f in fold_of.items() if len(f) > 1)
        if split_groups:
            raise ValueError(
                f"the dataset's folds put one patient or duplicate image in two folds: "
                f"{split_groups[:5]}; use computed folds instead"
            )
        training = kept
    else:
        training = assign_folds(
            kept, folds=folds, seed=seed, group_key=_GROUP, stratify_key=stratify_key
        )
    strip = [{k: v for k, v in item.items() if k != _GROUP} for item in training]
    held_out = [{k: v for k, v in item.items() if k not in (_GROUP, keys.FOLD)} for item in testing]
    return strip, held_out


_GROUP = "_split_group"
