"""``prep targets``: radiomics targets for every item of a datalist.

For each item with a mask the raw feature vector of :mod:`thyroid_monai.radiomics` is computed in a
process pool (with a progress bar) and cached under ``.radiomics_cache/`` beside the datalist,
keyed by a hash of the image and mask file contents, the spacing, the settings and the feature-set
version: a re-run computes nothing. The z-score statistics are fitted on the ``training`` items
only (optionally leaving one validation fold out too) and saved in ``radiomics_stats.json``
beside the datalist, which gains per item ``"radiomics": [standardised floats or null]`` and the
header ``"radiomics": {"features", "stats", "standardisation", "settings", ...}``.

Each item is isolated: an item whose image or mask cannot be read or whose features cannot be
computed gets ``"radiomics": null`` values, is listed in ``radiomics_rejected.csv`` beside the
datalist (``case_id,reason``; a header only when none failed) and the run goes on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from data_prep.convert import file_sha256
from thyroid_monai import keys
from thyroid_monai.data import load_datalist
from thyroid_monai.io.errors import safe_reason
from thyroid_monai.io.files import atomic_path, write_json_atomic
from thyroid_monai.io.nifti import read_nifti_2d
from thyroid_monai.radiomics import (
    FEATURE_SET_VERSION,
    FEATURES,
    RadiomicsSettings,
    Standardisation,
    compute_features,
)

CACHE = ".radiomics_cache"
STATS_FILE = "radiomics_stats.json"
REJECTED_FILE = "radiomics_rejected.csv"


@dataclass
class TargetsSummary:
    """What a ``prep targets`` run did."""

    items: int
    computed: int
    cached: int
    stats_path: Path
    failed: list[tuple[str, str]] = field(default_factory=list)
    """``(case_id, reason)`` of each item whose features could not be computed."""
    rejected_path: Path | None = None


def _cache_key(item: dict[str, Any], base: Path, settings: RadiomicsSettings) -> str:
    payload = {
        "version": FEATURE_SET_VERSION,
        "features": list(FEATURES),
        "settings": settings.to_dict(),
        "spacing": item.get(keys.SPACING),
        "image": file_sha256(base / item[keys.IMAGE]),
        "mask": file_sha256(base / item[keys.LABEL]),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _compute(
    task: tuple[str, str, list[float] | None, RadiomicsSettings, str],
) -> list[float | None] | str:
    """The raw features of one item, or the reason they could not be computed."""
    image_path, mask_path, spacing, settings, cache_path = task
    try:
        image, _ = read_nifti_2d(image_path)
        mask, _ = read_nifti_2d(mask_path)
        values = compute_features(image, mask, spacing, settings)
        write_json_atomic(cache_path, {"features": list(FEATURES), "values": values})
    except Exception as error:  # one item's failure must not end the run
        return safe_reason(error)
    return values


def _cache_key_or_reason(
    item: dict[str, Any], base: Path, settings: RadiomicsSettings
) -> tuple[str | None, str | None]:
    try:
        return _cache_key(item, base, settings), None
    except Exception as error:  # a missing or unreadable image or mask, an item without one
        return None, safe_reason(error)


@dataclass
class _Work:
    """The features of each item: known (raw, by item index), failed, or still to compute."""

    raw: dict[int, list[float | None]] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)
    """The reason of each item whose features could not be computed."""
    tasks: list[tuple[str, str, list[float] | None, RadiomicsSettings, str]] = field(
        default_factory=list
    )
    """The arguments of :func:`_compute` of each pending item."""
    pending: list[int] = field(default_factory=list)


def _plan(items: list[dict[str, Any]], base: Path, settings: RadiomicsSettings) -> _Work:
    """What is known of each item (no mask, unreadable, cached) and the tasks left to compute."""
    work = _Work()
    for index, item in enumerate(items):
        if not item.get(keys.LABEL):
            work.raw[index] = [None] * len(FEATURES)
            continue
        key, reason = _cache_key_or_reason(item, base, settings)
        if reason is not None:
            work.failed[index] = reason
            continue
        cache_path = base / CACHE / f"{key}.json"
        if cache_path.is_file():
            cached = json.loads(cache_path.read_text(encoding="utf-8"))
            if cached.get("features") == list(FEATURES):
                work.raw[index] = cached["values"]
                continue
        work.pending.append(index)
        work.tasks.append((str(base / item[keys.IMAGE]), str(base / item[keys.LABEL]),
                           item.get(keys.SPACING), settings, str(cache_path)))  # fmt: skip
    return work


def _compute_pending(work: _Work, *, workers: int, progress: bool) -> None:
    """Computes the pending features (in ``workers`` processes), recording values or failures."""
    tasks, pending = work.tasks, work.pending
    with tqdm(total=len(tasks), desc="radiomics", unit="img", disable=not progress) as bar:
        if workers > 1 and len(tasks) > 1:
            with ProcessPoolExecutor(workers) as pool:
                results = pool.map(_compute, tasks, chunksize=2)
                for index, values in zip(pending, results, strict=True):
                    _record(index, values, work.raw, work.failed)
                    bar.update(1)
        else:
            for index, task in zip(pending, tasks, strict=True):
                _record(index, _compute(task), work.raw, work.failed)
                bar.update(1)


def write_radiomics_targets(
    datalist_path: str | Path,
    *,
    settings: RadiomicsSettings | None = None,
    workers: int = 1,
    exclude_fold: int | None = None,
    progress: bool = True,
) -> TargetsSummary:
    """Adds standardised radiomics targets to a datalist (rewritten atomically).

    Args:
        datalist_path: The datalist JSON.
        settings: Feature settings.
        workers: Processes computing features.
        exclude_fold: A validation fold also left out of the statistics.
        progress: Show a progress bar.

    Returns:
        Counts and the statistics file.

    Raises:
        ValueError: If no training item has a mask to fit the statistics on.
    """
    settings = settings or RadiomicsSettings()
    path = Path(datalist_path)
    datalist = load_datalist(path)
    base = path.parent
    items = datalist["training"] + datalist.get("testing", [])
    work = _plan(items, base, settings)
    cached_count = len(work.raw) - sum(1 for i in work.raw if not items[i].get(keys.LABEL))
    _compute_pending(work, workers=workers, progress=progress)
    raw, failed, tasks, pending = work.raw, work.failed, work.tasks, work.pending
    for index in failed:
        raw[index] = [None] * len(FEATURES)
    failures = [(str(items[i].get(keys.CASE_ID, i)), failed[i]) for i in sorted(failed)]
    rejected_path = _write_rejected(base / REJECTED_FILE, failures)
    training_count = len(datalist["training"])
    fit_on = [
        raw[i]
        for i in range(training_count)
        if items[i].get(keys.LABEL)
        and i not in failed
        and (exclude_fold is None or items[i].get(keys.FOLD) != exclude_fold)
    ]
    if not fit_on:
        raise ValueError(f"{path}: no training item with a mask to fit the radiomics statistics on")
    standardisation = Standardisation.fit(fit_on)
    for index, item in enumerate(items):
        item[keys.RADIOMICS] = standardisation.apply(raw[index])
    fitted = "training items" + (
        f" outside fold {exclude_fold}" if exclude_fold is not None else ""
    )
    stats = {
        **standardisation.to_dict(),
        "fit_on": fitted,
        "items": len(fit_on),
        "settings": settings.to_dict(),
        "feature_set_version": FEATURE_SET_VERSION,
        "raw": {str(items[i].get(keys.CASE_ID, i)): raw[i] for i in sorted(raw)},
    }
    stats_path = write_json_atomic(base / STATS_FILE, stats)
    datalist["radiomics"] = {
        "features": list(FEATURES),
        "stats": STATS_FILE,
        "standardisation": f"z-score with mean and std of the {fitted}; null = not computable",
        "settings": settings.to_dict(),
        "feature_set_version": FEATURE_SET_VERSION,
    }
    write_json_atomic(path, datalist)
    computed = len(tasks) - sum(1 for i in pending if i in failed)
    return TargetsSummary(len(items), computed, cached_count, stats_path, failures, rejected_path)


def _record(
    index: int,
    result: list[float | None] | str,
    raw: dict[int, list[float | None]],
    failed: dict[int, str],
) -> None:
    if isinstance(result, str):
        failed[index] = result
    else:
        raw[index] = result


def _write_rejected(path: Path, failures: list[tuple[str, str]]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case_id", "reason"])
    writer.writerows(failures)
    with atomic_path(path) as temporary:
        temporary.write_text(buffer.getvalue(), encoding="utf-8")
    return path
